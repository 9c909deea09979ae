"""Monitoring group: drift of each landed batch against the champion's training data."""

from collections.abc import Iterator

import dagster as dg

from resources.artifact_store import ArtifactStore
from resources.dataset import DatasetResource
from resources.mlflow_registry import MlflowRegistry
from resources.policy import PolicyResource
from unified_assets.assets.data import PARTITIONS_PER_RUN, landed_batch
from unified_assets.compute import CPU_LIGHT
from unified_assets.metadata import OWNERS, placement_metadata
from unified_assets.partitions import BATCHES


@dg.asset(
    partitions_def=BATCHES,
    deps=[landed_batch],
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
    dataset: DatasetResource,
    store: ArtifactStore,
    mlflow_registry: MlflowRegistry,
    policy: PolicyResource,
) -> Iterator[dg.AssetMaterialization | dg.MaterializeResult]:
    """Judges each batch of the run against one reference. A range run records one
    materialization per batch (assets after it in that run are skipped: automation requests
    them on its next tick). A batch without a profile (only
    possible when launched by hand on a rejected batch) is left out and named in the run's
    one-line failure after the others are recorded."""
    from unified_assets.assets.data import batch_passed
    from unified_assets.monitoring import batch_drift as compute
    from unified_assets.monitoring import champion_reference, drift_key, profile_key

    reference = champion_reference(store, mlflow_registry, dataset.spec.name)
    where = placement_metadata(context, CPU_LIGHT, policy.policy.placement)
    missing = []
    for batch in context.partition_keys:
        if not batch_passed(store, batch) or not store.exists(profile_key(batch)):
            missing.append(batch)
            continue
        metadata = _judge(store, reference, batch, policy, compute, drift_key) | where
        if context.has_partition_key:
            # One batch: the asset's own output, so assets after it in the same run
            # (drift_report, materialized together from the UI) run too.
            yield dg.MaterializeResult(metadata=metadata)
        else:
            yield dg.AssetMaterialization(asset_key=context.asset_key, partition=batch,
                                          metadata=metadata)
    if missing:
        raise dg.Failure(f"batch(es) {', '.join(missing)} have no profile: they failed their "
                         "quality checks", allow_retries=False)


def _judge(store: ArtifactStore, reference, batch: str, policy: PolicyResource, compute,
           drift_key) -> dict:
    """The metadata of one batch's drift decision (what drift_retrain_sensor reads)."""
    if reference is None:
        return {"verdict": "no champion yet: nothing to compare"}
    version, batches, merged = reference
    result = compute(store, merged, batch, policy.policy.drift)
    store.write_json(drift_key(batch), result | {"champion": version})
    return {
        "dataset_drift": result["dataset_drift"],
        "share_of_drifted_columns": dg.MetadataValue.float(
            round(result["share_of_drifted_columns"], 4)),
        # What drift_retrain_sensor reads: it acts on this evidence, never recomputes it.
        "drifted_column_count": dg.MetadataValue.int(result["number_of_drifted_columns"]),
        "column_count": dg.MetadataValue.int(result["number_of_columns"]),
        "drifted_columns": dg.MetadataValue.json(result["drifted_columns"]),
        "champion_version": dg.MetadataValue.text(version),
        "reference_batches": dg.MetadataValue.json(batches),
        "columns": dg.MetadataValue.md(result["markdown"]),
    }
