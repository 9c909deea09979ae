"""Monitoring group: drift of each landed batch against the champion's training data."""

from collections.abc import Iterator

import dagster as dg

from resources.dataset import DatasetResource
from resources.mlflow_registry import MlflowRegistry
from resources.parquet_io import ParquetIOManager
from resources.policy import PolicyResource
from unified_assets.assets.data import LANDED_BATCH, PARTITIONS_PER_RUN, batch_records, landed_batch
from unified_assets.compute import CPU_LIGHT
from unified_assets.metadata import OWNERS, placement_metadata
from unified_assets.partitions import BATCHES, partition_result, values_by_partition


@dg.asset(
    partitions_def=BATCHES,
    # The batch's profile travels in its value's attrs: columns=[] reads no rows. A rejected
    # batch has no value and is named in the run's failure.
    ins={"landed_batch": dg.AssetIn(key=landed_batch.key,
                                    metadata={"columns": [], "allow_missing_partitions": True})},
    group_name="monitoring",
    kinds={"python"},
    owners=OWNERS,
    description=(
        "Per-column drift of one batch against the current champion's training batches, "
        "computed from their stored profiles with Evidently's default tests and thresholds "
        "(Wasserstein for numeric, Jensen-Shannon for categorical columns) unless the policy "
        "sets others; the batch drifts when the policy's share of columns drifts."
    ),
    # A batch rejected by its blocking checks is never monitored: it has no profile.
    automation_condition=dg.AutomationCondition.eager()
    & dg.AutomationCondition.all_deps_blocking_checks_passed(),
    # Automation launches the batches ingested together as one run (the champion's reference
    # profile is read once per run, not once per batch).
    backfill_policy=dg.BackfillPolicy.multi_run(max_partitions_per_run=PARTITIONS_PER_RUN),
    output_required=False,  # one materialization per partition, yielded as it is decided
    **CPU_LIGHT.asset_kwargs(),
)
def batch_drift(
    context: dg.AssetExecutionContext,
    landed_batch,  # a frame (one partition) or a dict partition -> frame (a range)
    mlflow_registry: MlflowRegistry,
    policy: PolicyResource,
    dataset: DatasetResource,
    values_io_manager: dg.ResourceParam[ParquetIOManager],
) -> Iterator[dg.AssetMaterialization | dg.MaterializeResult]:
    """Judges each batch of the run against one reference. A range run records one
    materialization per batch (assets after it in that run are skipped: automation requests
    them on its next tick). A batch its own ingestion run (this one) rejected is not
    monitored, and that is no failure; one launched by hand on a batch rejected earlier is
    named in the run's one-line failure after the others are recorded."""
    frames = values_by_partition(context, landed_batch)
    reference = champion_reference(values_io_manager, mlflow_registry, dataset.spec.name)
    where = placement_metadata(context, CPU_LIGHT, policy.policy.placement)
    missing, rejected_here = [], []
    records = batch_records(context.instance, context.partition_keys)
    for batch in context.partition_keys:
        record = records.get(batch)
        if batch not in frames or record is None or not record.passed:
            (rejected_here if record and record.run_id == context.run_id else missing).append(batch)
            continue
        metadata = _judge(reference, batch, frames[batch].attrs["profile"], policy,
                          values_io_manager) | where
        yield partition_result(context, batch, metadata)
    if rejected_here:
        context.log.info(f"not monitored, rejected by this run's checks: {', '.join(rejected_here)}")
    if missing:
        raise dg.Failure(f"batch(es) {', '.join(missing)} have no profile: they failed their "
                         "quality checks", allow_retries=False)


def champion_reference(values: ParquetIOManager, registry: MlflowRegistry, model_name: str
                       ) -> tuple[str, list[str], dict[str, dict], list[str]] | None:
    """(champion version, its training batches, the stored ones' profiles by batch on one
    layout, the batches profiled again to get there), or None without a champion or when
    none of its batches' values is stored any more. Read once per run."""
    from unified_assets.ml.drift_judgement import on_one_layout

    version = registry.alias_version(model_name)
    if version is None:
        return None
    batches = registry.training_batches(model_name, version)
    profiles = {b: values.attrs(LANDED_BATCH, b)["profile"] for b in batches
                if values.exists(LANDED_BATCH, b)}
    if not profiles:
        return None
    profiles, redone = on_one_layout(profiles, lambda b: values.load(LANDED_BATCH, b))
    return version, batches, profiles, redone


def _judge(reference, batch: str, profile: dict, policy: PolicyResource,
           values: ParquetIOManager) -> dict:
    """The metadata of one batch's drift decision (what drift_retrain_sensor and drift_report
    read: the decision lives here, nowhere else)."""
    from unified_assets.ml.drift_judgement import judge_drift, on_one_layout

    if reference is None:
        return {"verdict": "no champion yet: nothing to compare"}
    version, batches, profiles, redone = reference
    # The batch on the reference's layout (its rows are read only if it is on another).
    same, current = on_one_layout({**profiles, batch: profile},
                                  lambda b: values.load(LANDED_BATCH, b))
    result = judge_drift(list(profiles.values()), same[batch], policy.policy.drift)
    redone = redone + current
    extra = {"reprofiled_batches": dg.MetadataValue.json(redone)} if redone else {}
    return extra | {
        "dataset_drift": result["dataset_drift"],
        "share_of_drifted_columns": dg.MetadataValue.float(
            round(result["share_of_drifted_columns"], 4)),
        # What drift_retrain_sensor reads: it acts on this evidence, never recomputes it.
        "drifted_column_count": dg.MetadataValue.int(result["number_of_drifted_columns"]),
        "column_count": dg.MetadataValue.int(result["number_of_columns"]),
        "drifted_columns": dg.MetadataValue.json(result["drifted_columns"]),
        "columns_judged": dg.MetadataValue.json([c["column"] for c in result["columns"]]),
        "champion_version": dg.MetadataValue.text(version),
        "reference_batches": dg.MetadataValue.json(batches),
        "columns": dg.MetadataValue.md(result["markdown"]),
    }
