"""Training group: the training set from a window of valid batches, with a fixed holdout."""


import dagster as dg
from pydantic import Field

from resources.dataset import DatasetResource
from resources.parquet_io import ParquetIOManager
from unified_assets.assets.data import batch_records, landed_batch
from unified_assets.assets.labels import awaiting_labels, batch_labels, labelled_frame
from unified_assets.assets.monitoring import batch_drift
from unified_assets.compute import CPU_LIGHT
from unified_assets.metadata import OWNERS, markdown_table, placement_metadata, rounded
from unified_assets.ml.training_data import TrainingSet
from unified_assets.partitions import BATCHES


class TrainingSetConfig(dg.Config):
    window_batches: int = Field(
        default=8, ge=1, description="How many of the most recent valid batches to train on."
    )
    holdout_fraction: float = Field(
        default=0.2, gt=0.0, lt=1.0,
        description="Share of rows held out, chosen by a hash of the row id so it never moves.",
    )
    min_rows: int = Field(default=200, ge=10, description="Refuse to train on fewer rows.")


def select_window(
    ordered_batches: list[str], materialized: set[str], reports: dict[str, dict], window: int,
    awaiting_labels: frozenset[str] = frozenset(),
) -> tuple[list[str], dict[str, str]]:
    """The newest `window` labelled batches that were ingested and passed every check, oldest
    first, and the reason each other ingested batch was left out."""
    excluded: dict[str, str] = {}
    valid: list[str] = []
    for batch in ordered_batches:
        if batch not in materialized:
            continue
        report = reports.get(batch)
        if report is None:
            excluded[batch] = "no ingestion report"
        elif not report["passed"]:
            failed = [name for name, problems in report["findings"].items() if problems] \
                or ["(not recorded)"]
            excluded[batch] = f"failed checks: {', '.join(failed)}"
        elif batch in awaiting_labels:
            excluded[batch] = "awaiting late labels"
        else:
            valid.append(batch)
    return valid[-window:], excluded


@dg.asset(
    # batch_drift: monitoring feeds retraining (the drift sensor's evidence) in the lineage.
    # training_set has no automation condition, so no drift decision starts a retrain by
    # itself; all partitions of each batch asset map to the one training set.
    deps=[landed_batch, batch_labels, batch_drift],
    group_name="training",
    kinds={"pandas"},
    owners=OWNERS,
    description=(
        "Rows of the newest valid, labelled batches (a configurable window; labels inline or "
        "landed later), split into train and a "
        "fixed holdout by a hash of each row id. Batches that failed a quality check are "
        "never used; metadata names the batches used and skipped."
    ),
    **CPU_LIGHT.asset_kwargs(),
)
def training_set(
    context: dg.AssetExecutionContext,
    config: TrainingSetConfig,
    dataset: DatasetResource,
    values_io_manager: dg.ResourceParam[ParquetIOManager],
) -> dg.Output[TrainingSet]:
    """Validity is Dagster's evidence (each batch's latest materialization metadata); the
    rows are the batches' values, read through the values IO manager for the window only."""
    import pandas as pd

    from unified_assets.ml.features import holdout_mask

    spec = dataset.spec
    ordered = context.instance.get_dynamic_partitions(BATCHES.name)
    instance = context.instance
    materialized = set(instance.get_materialized_partitions(landed_batch.key))
    found = batch_records(instance, [b for b in ordered if b in materialized])
    records = {b: found[b] for b in ordered if b in found}
    reports = {b: {"passed": r.passed, "findings": r.findings} for b, r in records.items()}
    awaiting = frozenset(b for b, r in records.items()
                         if r.passed and awaiting_labels(instance, b, r))
    window, excluded = select_window(ordered, materialized, reports, config.window_batches, awaiting)
    if not window:
        raise dg.Failure(
            f"no valid ingested batch to train on ({len(materialized)} ingested, "
            f"{len(excluded)} excluded: {excluded})"
        )
    frame = pd.concat([labelled_frame(instance, values_io_manager, b, spec.target, records[b])
                       for b in window], ignore_index=True)
    if len(frame) < config.min_rows:
        raise dg.Failure(f"only {len(frame)} rows in batches {window}; min_rows={config.min_rows}")
    in_holdout = holdout_mask(frame["row_id"], config.holdout_fraction)
    train, holdout = frame[~in_holdout].reset_index(drop=True), frame[in_holdout].reset_index(
        drop=True
    )
    for part, rows in (("train", train), ("holdout", holdout)):
        if rows[spec.target].nunique() < 2:
            raise dg.Failure(f"the {part} split has a single label class; add more batches")
    per_batch = frame.groupby("batch_id").agg(rows=("row_id", "size"), label_rate=(spec.target, "mean"))
    result = TrainingSet(
        train=train, holdout=holdout, batches=window, target=spec.target,
        numeric_features=spec.numeric_features, categorical_features=spec.categorical_features,
        segment_columns=spec.segment_columns, dataset_name=spec.name, excluded_batches=excluded,
    )
    return dg.Output(
        result,
        metadata={
            "batches": dg.MetadataValue.json(window),
            "train_rows": dg.MetadataValue.int(len(train)),
            "holdout_rows": dg.MetadataValue.int(len(holdout)),
            "label_rate": dg.MetadataValue.float(rounded(float(frame[spec.target].mean()))),
            "per_batch": markdown_table(
                [{"batch": b, "rows": int(per_batch.at[b, "rows"]),
                  "label_rate": rounded(float(per_batch.at[b, "label_rate"]))} for b in window],
                ["batch", "rows", "label_rate"],
            ),
            "excluded_batches": markdown_table(
                [{"batch": b, "reason": r} for b, r in excluded.items()], ["batch", "reason"]
            ),
            **placement_metadata(context, CPU_LIGHT),
        },
    )
