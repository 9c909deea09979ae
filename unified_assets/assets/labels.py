"""Late ground truth: labels landing after their batch become data for the same partition."""

from typing import TYPE_CHECKING

import dagster as dg

from resources.artifact_store import ArtifactStore
from resources.dataset import DatasetResource
from unified_assets.assets.data import curated_key, landed_batch
from unified_assets.compute import CPU_LIGHT
from unified_assets.metadata import OWNERS
from unified_assets.partitions import BATCHES

if TYPE_CHECKING:
    import pandas as pd

LABELS_CHECK = "labels_match_batch"


def labels_key(batch: str) -> str:
    return f"labels/{batch}.parquet"


def labelled_frame(store: ArtifactStore, batch: str, target: str) -> "pd.DataFrame | None":
    """The curated batch with its labels (inline or landed later), or None while unlabelled."""
    frame = store.read_frame(curated_key(batch))
    if target in frame.columns:
        return frame
    if not store.exists(labels_key(batch)):
        return None
    labels = store.read_frame(labels_key(batch))
    return frame.merge(labels, on="row_id", how="inner", validate="one_to_one")


def is_trainable(store: ArtifactStore, batch: str) -> bool:
    """Ingested, passed every check, and labelled (inline or by late labels)."""
    from unified_assets.assets.data import report_key

    if not store.exists(report_key(batch)):
        return False
    report = store.read_json(report_key(batch))
    return report["passed"] and (report.get("labelled", True) or store.exists(labels_key(batch)))


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
        "measured."
    ),
    check_specs=[dg.AssetCheckSpec(
        LABELS_CHECK, asset="batch_labels", blocking=True,
        description="Every batch row has exactly one binary label and no label is for an "
        "unknown row.")],
    **CPU_LIGHT.asset_kwargs(),
)
def batch_labels(
    context: dg.AssetExecutionContext, dataset: DatasetResource, store: ArtifactStore
) -> dg.MaterializeResult:
    from unified_assets.ml.labels import align_labels

    batch, spec = context.partition_key, dataset.spec
    if not store.exists(curated_key(batch)):
        raise dg.Failure(f"batch {batch} was not ingested or failed its quality checks; "
                         "its labels cannot be used")
    frame = store.read_frame(curated_key(batch), columns=None)
    if spec.target in frame.columns:
        raise dg.Failure(f"batch {batch} landed with its labels; the late labels file "
                         f"{dataset.label_files().get(batch)} is not used")
    path = dataset.label_file(batch)
    report = align_labels(path, frame, spec)
    metadata: dict = {"labels_file": dg.MetadataValue.path(str(path)),
                      "batch_rows": dg.MetadataValue.int(len(frame))}
    if report.passed:
        store.write_frame(labels_key(batch), report.labels)
        metadata["label_rate"] = dg.MetadataValue.float(float(report.labels[spec.target].mean()))
    else:
        context.log.error(f"labels for {batch} ({path}) rejected: {report.problems}")
    return dg.MaterializeResult(
        metadata=metadata,
        check_results=[dg.AssetCheckResult(
            check_name=LABELS_CHECK, passed=report.passed, severity=dg.AssetCheckSeverity.ERROR,
            metadata={"file": dg.MetadataValue.path(str(path)),
                      "details": dg.MetadataValue.md(
                          "\n".join(f"- {p}" for p in report.problems) or "no problems")},
        )],
    )
