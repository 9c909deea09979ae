"""Monitoring group: how the champion does on real traffic, once a batch's labels land."""

from typing import TYPE_CHECKING

import dagster as dg

from resources.dataset import DatasetResource
from resources.decision_store import DecisionStore
from resources.mlflow_registry import MlflowRegistry
from resources.parquet_io import ParquetIOManager
from resources.policy import PolicyResource
from unified_assets.assets.labels import batch_labels, labelled_frame
from unified_assets.compute import CPU_LIGHT
from unified_assets.metadata import OWNERS, markdown_table, placement_metadata, rounded
from unified_assets.partitions import BATCHES

if TYPE_CHECKING:
    import pandas as pd

    from unified_assets.ml.dataset_spec import DatasetSpec
    from unified_assets.ml.live_verdict import LiveVerdict
    from unified_assets.policy import Policy

LIVE_METRICS = ["roc_auc", "pr_auc", "f1", "recall", "precision", "brier"]
ACTION_KEY = "live_action"


LIVE_RECORD_KEY = "live_record"  # the full measurement, as JSON metadata


def latest_live_record(instance: dg.DagsterInstance, champion: str) -> dict | None:
    """The champion version's latest live measurement that judged it (ok, retrain or
    rollback): what a rollback incident quotes. From `live_performance`'s metadata."""
    result = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey("live_performance")), limit=200)
    for record in result.records:  # newest first
        metadata = record.asset_materialization.metadata
        if LIVE_RECORD_KEY not in metadata:
            continue
        measured = metadata[LIVE_RECORD_KEY].value
        if measured.get("champion") == champion and \
                measured.get("verdict", {}).get("action") in ("ok", "retrain", "rollback"):
            return dict(measured)
    return None


def _score(registry: MlflowRegistry, model_name: str, version: str, frame, target: str,
           threshold: float) -> dict:
    from unified_assets.ml.metrics import binary_metrics

    scores = registry.load_scorer(model_name, version)(frame)
    return binary_metrics(frame[target].to_numpy(), scores, threshold)


def _previous_champion(decisions: DecisionStore, registry: MlflowRegistry,
                       model_name: str) -> str | None:
    from unified_assets.services.champion import ChampionError, ChampionLedger

    try:
        return ChampionLedger(decisions, registry).rollback_target(model_name)
    except ChampionError:
        return None


def _measure(context: dg.AssetExecutionContext, registry: MlflowRegistry, decisions: DecisionStore,
             spec: "DatasetSpec", frame: "pd.DataFrame",
             rules: "Policy") -> tuple[dict, str | None, "LiveVerdict"]:
    """The champion's (and the previous champion's) numbers on the labelled rows, and the
    policy's verdict on them."""
    from unified_assets.ml.live_verdict import LiveVerdict, judge_live
    from unified_assets.services.champion import ChampionLedger

    batch = context.partition_key
    previous = _previous_champion(decisions, registry, spec.name)
    champion = ChampionLedger(decisions, registry).champion(spec.name)  # the ledger's, not the alias
    record: dict = {"batch": batch, "model_name": spec.name, "champion": champion,
                    "rows": len(frame), "positives": int(frame[spec.target].sum())}
    if champion is None:
        previous, verdict = None, LiveVerdict("insufficient", "no champion yet")
    else:
        threshold = rules.promotion.operating_threshold
        record["metrics"] = _score(registry, spec.name, champion, frame, spec.target, threshold)
        if previous is not None and batch in registry.training_batches(spec.name, previous):
            context.log.info(f"previous champion v{previous} was trained on {batch}: not compared")
            previous = None
        if previous is not None:
            try:
                record["previous_metrics"] = _score(registry, spec.name, previous, frame,
                                                    spec.target, threshold)
            except Exception as error:  # noqa: BLE001 - judge without it, and say so
                context.log.warning(f"previous champion v{previous} could not score {batch}: {error}")
                previous = None
        record["previous_champion"] = previous
        if batch in registry.training_batches(spec.name, champion):
            verdict = LiveVerdict("not_live", f"v{champion} was trained on {batch}; its numbers "
                                  "here are not live performance")
        else:
            verdict = judge_live(record["metrics"], record.get("previous_metrics"),
                                 record["rows"], record["positives"], rules.live)
    return record, previous, verdict


@dg.asset(
    partitions_def=BATCHES,
    deps=[batch_labels],
    group_name="monitoring",
    kinds={"mlflow", "python"},
    owners=OWNERS,
    description=(
        "The champion's metrics on one batch whose ground truth has landed, beside the previous "
        "champion's on the same rows, and what the policy's `live` section asks for: nothing, a "
        "retrain (below the floor) or a rollback (far below the previous champion). The "
        "live-performance sensor acts on it."
    ),
    check_specs=[
        dg.AssetCheckSpec("live_within_policy", asset="live_performance",
                          description="The champion's live numbers need no retrain or rollback."),
    ],
    **CPU_LIGHT.asset_kwargs(),
)
def live_performance(
    context: dg.AssetExecutionContext,
    dataset: DatasetResource,
    values_io_manager: dg.ResourceParam[ParquetIOManager],
    mlflow_registry: MlflowRegistry,
    decisions: DecisionStore,
    policy: PolicyResource,
) -> dg.MaterializeResult:
    batch, spec, rules = context.partition_key, dataset.spec, policy.policy
    frame = labelled_frame(context.instance, values_io_manager, batch, spec.target)
    if frame is None:
        raise dg.Failure(f"batch {batch} has no labels yet")
    record, previous, verdict = _measure(context, mlflow_registry, decisions, spec, frame, rules)
    champion = record["champion"]
    record["verdict"] = verdict.to_dict()
    context.log.info(f"live performance of v{champion} on {batch}: {verdict.action}: "
                     f"{verdict.reason}")
    rows = [{"model": f"champion v{champion}", **record.get("metrics", {})}]
    if previous is not None:
        rows.append({"model": f"previous v{previous}", **record["previous_metrics"]})
    metric = rules.live.metric
    metadata = {
        ACTION_KEY: dg.MetadataValue.text(verdict.action),
        "reason": dg.MetadataValue.text(verdict.reason),
        "labelled_rows": dg.MetadataValue.int(record["rows"]),
        "positives": dg.MetadataValue.int(record["positives"]),
        "metrics": markdown_table(rows, ["model", *LIVE_METRICS]),
        LIVE_RECORD_KEY: dg.MetadataValue.json(record),
    }
    for key, version in (("champion_version", champion), ("previous_champion", previous)):
        if version is not None:
            metadata[key] = dg.MetadataValue.text(version)
    value = record.get("metrics", {}).get(metric)
    if value is not None:
        metadata[f"live_{metric}"] = dg.MetadataValue.float(rounded(value))
    return dg.MaterializeResult(metadata=metadata | placement_metadata(
        context, CPU_LIGHT, rules.placement), check_results=[dg.AssetCheckResult(
        check_name="live_within_policy", passed=verdict.action not in ("retrain", "rollback"),
        severity=dg.AssetCheckSeverity.WARN,
        metadata={"action": verdict.action, "reason": verdict.reason},
    )])
