"""Late ground truth: labels landing after their batch become data for the same partition."""

from typing import TYPE_CHECKING

import dagster as dg

from resources.dataset import DatasetResource
from resources.parquet_io import VALUES_IO_MANAGER, ParquetIOManager
from unified_assets.assets.data import LANDED_BATCH, BatchRecord, batch_record, landed_batch
from unified_assets.compute import CPU_LIGHT
from unified_assets.metadata import OWNERS, placement_metadata, rounded
from unified_assets.partitions import BATCHES

if TYPE_CHECKING:
    import pandas as pd

LABELS_CHECK = "labels_match_batch"
BATCH_LABELS = dg.AssetKey("batch_labels")


def _latest_labels(instance: dg.DagsterInstance, batch: str) -> dict | None:
    """The metadata of the batch's latest `batch_labels` materialization, as plain values."""
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=BATCH_LABELS, asset_partitions=[batch]), limit=1).records
    if not records:
        return None
    return {k: v.value for k, v in records[0].asset_materialization.metadata.items()}


def labels_current(instance: dg.DagsterInstance, batch: str, record: BatchRecord) -> bool:
    """The stored labels are the batch's truth only when its latest labels file passed and
    was matched to the batch version now ingested (`record`)."""
    labels = _latest_labels(instance, batch)
    return labels is not None and bool(labels.get("labels_passed")) and \
        labels.get("batch_version") == record.version


def awaiting_labels(instance: dg.DagsterInstance, batch: str, record: BatchRecord) -> bool:
    """Landed without its labels and no current labels stored yet."""
    return not record.labelled and not labels_current(instance, batch, record)


def labelled_frame(instance: dg.DagsterInstance, values: ParquetIOManager, batch: str,
                   target: str, record: BatchRecord | None = None) -> "pd.DataFrame | None":
    """The curated batch with its labels (inline or landed later), or None while unlabelled.
    Labels matched to another version of the batch, or superseded by a rejected labels
    file, are an error rather than silently used or dropped. `record`: the batch's latest
    ingestion when the caller has just read it (read here otherwise)."""
    record = record or batch_record(instance, batch)
    if record is None or not record.passed:
        raise dg.Failure(f"batch {batch} was not ingested or failed its quality checks")
    frame = values.load(LANDED_BATCH, batch)
    frame.attrs.clear()  # the profile stays with the batch; pandas would copy it on every step
    if target in frame.columns:
        return frame
    labels_meta = _latest_labels(instance, batch)
    if labels_meta is None:
        return None
    if not labels_current(instance, batch, record):
        raise dg.Failure(
            f"labels stored for batch {batch} are not its current truth: they were matched to "
            f"version {labels_meta.get('batch_version')} of the batch, which is now version "
            f"{record.version}, and the latest labels file ({labels_meta.get('labels_uri')}, "
            f"version {labels_meta.get('labels_version')}) "
            f"{'passed' if labels_meta.get('labels_passed') else 'was rejected'}"
            "; labels_landing_sensor matches them again")
    labels = values.load(BATCH_LABELS, batch)
    merged = frame.merge(labels, on="row_id", how="inner", validate="one_to_one")
    if len(merged) != len(frame):
        raise dg.Failure(f"labels stored for batch {batch} cover {len(merged)} of its {len(frame)} rows")
    return merged


def is_trainable(instance: dg.DagsterInstance, batch: str) -> bool:
    """Ingested, passed every check, and labelled (inline or by current late labels)."""
    record = batch_record(instance, batch)
    return record is not None and record.passed and not awaiting_labels(instance, batch, record)


@dg.asset(
    partitions_def=BATCHES,
    ins={"landed_batch": dg.AssetIn(key=landed_batch.key)},
    io_manager_key=VALUES_IO_MANAGER,
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
    context: dg.AssetExecutionContext, dataset: DatasetResource,
    landed_batch,  # the batch's curated rows (a DataFrame)
):  # a MaterializeResult with a value: annotated so, Dagster would store none
    """The value is the labels (row id and target) of a passing labels file; a rejected file
    stores none, so labels of an earlier file are never read as current."""
    from unified_assets.ml.labels import align_labels

    batch, spec = context.partition_key, dataset.spec
    record = batch_record(context.instance, batch)
    if record is None or not record.passed:
        raise dg.Failure(f"batch {batch} was not ingested or failed its quality checks; "
                         "its labels cannot be used")
    frame = landed_batch
    frame.attrs.clear()  # the profile stays with the batch; pandas would copy it on every step
    landed = dataset.labels(batch)
    if spec.target in frame.columns:
        raise dg.Failure(f"batch {batch} landed with its labels; the late labels file "
                         f"{landed.uri} is not used")
    path = dataset.fetch(landed)
    result = align_labels(path, frame, spec)
    dataset.check_unchanged(landed)
    metadata: dict = {"labels_file": dg.MetadataValue.path(str(path)),
                      "labels_uri": dg.MetadataValue.text(landed.uri),
                      "labels_version": dg.MetadataValue.text(landed.version),
                      "batch_version": dg.MetadataValue.text(str(record.version)),
                      "batch_rows": dg.MetadataValue.int(len(frame)),
                      # What readers of label validity check (labels_current).
                      "labels_passed": result.passed}
    if result.passed:
        metadata["label_rate"] = dg.MetadataValue.float(
            rounded(float(result.labels[spec.target].mean())))
    else:
        context.log.error(f"labels for {batch} ({landed.uri}, version {landed.version}) rejected: "
                          f"{result.problems}; the batch waits for valid labels")
    return dg.MaterializeResult(
        # A dict without the partition: no value, and the earlier labels are removed.
        value=result.labels if result.passed else {},
        metadata=metadata | placement_metadata(context, CPU_LIGHT),
        check_results=[dg.AssetCheckResult(
            check_name=LABELS_CHECK, passed=result.passed, severity=dg.AssetCheckSeverity.ERROR,
            metadata={"file": dg.MetadataValue.path(str(path)),
                      "labels_version": dg.MetadataValue.text(landed.version),
                      "details": dg.MetadataValue.md(
                          "\n".join(f"- {p}" for p in result.problems) or "no problems")},
        )],
    )
