"""Late ground truth: labels landing after their batch become data for the same partition."""

from typing import TYPE_CHECKING

import dagster as dg

from resources.artifact_store import ArtifactStore, ArtifactWriteError
from resources.dataset import DatasetResource
from unified_assets.assets.data import curated_key, landed_batch
from unified_assets.compute import CPU_LIGHT
from unified_assets.metadata import OWNERS, placement_metadata, rounded
from unified_assets.partitions import BATCHES

if TYPE_CHECKING:
    import pandas as pd

LABELS_CHECK = "labels_match_batch"


def labels_key(batch: str) -> str:
    return f"labels/{batch}.parquet"


def labels_record_key(batch: str) -> str:
    """Which labels file version was matched to which batch version, and whether it passed."""
    return f"labels/{batch}.json"


def labels_current(store: ArtifactStore, batch: str, report: dict) -> bool:
    """Stored labels are the batch's truth only when the latest labels file passed and was
    matched to the batch version now stored (`report` is the batch's ingestion report)."""
    if not store.exists(labels_key(batch)):
        return False
    if not store.exists(labels_record_key(batch)):
        return "version" not in report  # both stored before versions were recorded
    record = store.read_json(labels_record_key(batch))
    return bool(record.get("passed")) and record.get("batch_version") == report.get("version")


def awaiting_labels(store: ArtifactStore, batch: str, report: dict) -> bool:
    """Landed without its labels and no current labels stored yet."""
    return not report.get("labelled", True) and not labels_current(store, batch, report)


def labelled_frame(store: ArtifactStore, batch: str, target: str) -> "pd.DataFrame | None":
    """The curated batch with its labels (inline or landed later), or None while unlabelled.
    Labels stored for another version of the batch, or superseded by a rejected labels file,
    are an error rather than silently used or dropped."""
    from unified_assets.assets.data import report_key

    frame = store.read_frame(curated_key(batch))
    if target in frame.columns:
        return frame
    if not store.exists(labels_key(batch)):
        return None
    report = store.read_json(report_key(batch)) if store.exists(report_key(batch)) else {}
    if not labels_current(store, batch, report):
        record = store.read_json(labels_record_key(batch)) \
            if store.exists(labels_record_key(batch)) else {}
        raise dg.Failure(
            f"labels stored for batch {batch} are not its current truth: they were matched to "
            f"version {record.get('batch_version')} of the batch, which is now version "
            f"{report.get('version')}, and the latest labels file ({record.get('labels_file')}, "
            f"version {record.get('labels_version')}) {'passed' if record.get('passed') else 'was rejected'}"
            "; labels_landing_sensor matches them again")
    labels = store.read_frame(labels_key(batch))
    merged = frame.merge(labels, on="row_id", how="inner", validate="one_to_one")
    if len(merged) != len(frame):
        raise dg.Failure(f"labels stored for batch {batch} cover {len(merged)} of its {len(frame)} rows")
    return merged


def is_trainable(store: ArtifactStore, batch: str) -> bool:
    """Ingested, passed every check, and labelled (inline or by current late labels)."""
    from unified_assets.assets.data import report_key

    if not store.exists(report_key(batch)):
        return False
    report = store.read_json(report_key(batch))
    return bool(report["passed"]) and not awaiting_labels(store, batch, report)


@dg.asset(
    partitions_def=BATCHES,
    deps=[landed_batch],
    group_name="data",
    kinds={"parquet", "pandas"},
    owners=OWNERS,
    description=(
        "Ground-truth labels that landed after their batch (a file named like the batch under "
        "the landing zone's labels folder), matched to the batch's rows by id. Once stored, the "
        "batch counts as labelled for training and the champion's live performance on it is "
        "measured. A changed labels file, or a re-landed batch, is matched again; labels "
        "matched to another version of the batch are never used."
    ),
    check_specs=[dg.AssetCheckSpec(
        LABELS_CHECK, asset="batch_labels", blocking=True,
        description="Every batch row has exactly one binary label, no label is for an unknown "
        "row, and label ids are never null or duplicated.")],
    **CPU_LIGHT.asset_kwargs(),
)
def batch_labels(
    context: dg.AssetExecutionContext, dataset: DatasetResource, store: ArtifactStore
) -> dg.MaterializeResult:
    from unified_assets.assets.data import report_key
    from unified_assets.ml.labels import align_labels

    batch, spec = context.partition_key, dataset.spec
    report = store.read_json(report_key(batch)) if store.exists(report_key(batch)) else None
    if report is None or not report["passed"] or not store.exists(curated_key(batch)):
        raise dg.Failure(f"batch {batch} was not ingested or failed its quality checks; "
                         "its labels cannot be used")
    frame = store.read_frame(curated_key(batch), columns=None)
    landed = dataset.labels(batch)
    if spec.target in frame.columns:
        raise dg.Failure(f"batch {batch} landed with its labels; the late labels file "
                         f"{landed.uri} is not used")
    path = dataset.fetch(landed)
    result = align_labels(path, frame, spec)
    dataset.check_unchanged(landed)
    record = {"batch": batch, "batch_version": report.get("version"), "labels_file": landed.uri,
              "labels_version": landed.version, "run_id": context.run_id,
              "passed": result.passed, "problems": result.problems}
    try:
        if result.passed:
            # The labels stored before stop counting first: a failure half way never leaves
            # old labels marked current beside new ones.
            store.write_json(labels_record_key(batch), {**record, "passed": False, "state": "storing"})
            store.write_frame(labels_key(batch), result.labels)
        store.write_json(labels_record_key(batch), record)
    except ArtifactWriteError as error:
        raise dg.Failure(
            description=f"labels for batch {batch} ({landed.uri}, version {landed.version}) were "
            f"not stored: {error}. The labels sensor retries.") from error
    metadata: dict = {"labels_file": dg.MetadataValue.path(str(path)),
                      "labels_uri": dg.MetadataValue.text(landed.uri),
                      "labels_version": dg.MetadataValue.text(landed.version),
                      "batch_version": dg.MetadataValue.text(str(report.get("version"))),
                      "batch_rows": dg.MetadataValue.int(len(frame))}
    if result.passed:
        metadata["label_rate"] = dg.MetadataValue.float(
            rounded(float(result.labels[spec.target].mean())))
    else:
        context.log.error(f"labels for {batch} ({landed.uri}, version {landed.version}) rejected: "
                          f"{result.problems}; the batch waits for valid labels")
    return dg.MaterializeResult(
        metadata=metadata | placement_metadata(context, CPU_LIGHT),
        check_results=[dg.AssetCheckResult(
            check_name=LABELS_CHECK, passed=result.passed, severity=dg.AssetCheckSeverity.ERROR,
            metadata={"file": dg.MetadataValue.path(str(path)),
                      "labels_version": dg.MetadataValue.text(landed.version),
                      "details": dg.MetadataValue.md(
                          "\n".join(f"- {p}" for p in result.problems) or "no problems")},
        )],
    )
