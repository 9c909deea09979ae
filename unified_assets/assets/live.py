"""Monitoring group: how the champion does on real traffic, once a batch's labels land."""

import dagster as dg

from resources.artifact_store import ArtifactStore
from resources.dataset import DatasetResource
from resources.decision_store import DecisionStore
from resources.mlflow_registry import MlflowRegistry
from resources.policy import PolicyResource
from unified_assets.assets.labels import batch_labels, labelled_frame
from unified_assets.compute import CPU_LIGHT
from unified_assets.metadata import OWNERS, markdown_table
from unified_assets.partitions import BATCHES

LIVE_METRICS = ["roc_auc", "pr_auc", "f1", "recall", "precision", "brier"]
ACTION_KEY = "live_action"


def live_key(model_name: str, name: str) -> str:
    return f"live/{model_name}/{name}.json"


def _score(registry: MlflowRegistry, model_name: str, version: str, frame, target: str,
           threshold: float) -> dict:
    from unified_assets.ml.metrics import binary_metrics

    scores = registry.load_scorer(model_name, version)(frame)
    return binary_metrics(frame[target].to_numpy(), scores, threshold)


def _previous_champion(decisions: DecisionStore, registry: MlflowRegistry,
                       model_name: str) -> str | None:
    from unified_assets.champion import ChampionError, ChampionLedger

    try:
        return ChampionLedger(decisions, registry).rollback_target(model_name)
    except ChampionError:
        return None


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
    store: ArtifactStore,
    mlflow_registry: MlflowRegistry,
    decisions: DecisionStore,
    policy: PolicyResource,
) -> dg.MaterializeResult:
    from unified_assets.live import LiveVerdict, judge_live

    batch, spec, rules = context.partition_key, dataset.spec, policy.policy
    frame = labelled_frame(store, batch, spec.target)
    if frame is None:
        raise dg.Failure(f"batch {batch} has no labels yet")
    champion = mlflow_registry.alias_version(spec.name)
    record: dict = {"batch": batch, "model_name": spec.name, "champion": champion,
                    "rows": len(frame), "positives": int(frame[spec.target].sum())}
    previous = None
    if champion is None:
        verdict = LiveVerdict("insufficient", "no champion yet")
    else:
        threshold = rules.promotion.operating_threshold
        record["metrics"] = _score(mlflow_registry, spec.name, champion, frame, spec.target, threshold)
        training = mlflow_registry.version_tags(spec.name, champion).get("training_batches", "")
        previous = _previous_champion(decisions, mlflow_registry, spec.name)
        record["previous_champion"] = previous
        if previous is not None:
            record["previous_metrics"] = _score(mlflow_registry, spec.name, previous, frame,
                                                spec.target, threshold)
        if batch in training.split(","):
            verdict = LiveVerdict("not_live", f"v{champion} was trained on {batch}; its numbers "
                                  "here are not live performance")
        else:
            verdict = judge_live(record["metrics"], record.get("previous_metrics"),
                                 record["rows"], record["positives"], rules.live)
    record["verdict"] = verdict.to_dict()
    store.write_json(live_key(spec.name, batch), record)
    if verdict.action != "not_live" and champion is not None:
        store.write_json(live_key(spec.name, "latest"), record)
    context.log.info(f"live performance of v{champion} on {batch}: {verdict.action}: "
                     f"{verdict.reason}")
    rows = [{"model": f"champion v{champion}", **record.get("metrics", {})}]
    if previous is not None:
        rows.append({"model": f"previous v{previous}", **record["previous_metrics"]})
    metric = rules.live.metric
    metadata = {
        ACTION_KEY: dg.MetadataValue.text(verdict.action),
        "reason": dg.MetadataValue.text(verdict.reason),
        "champion_version": dg.MetadataValue.text(str(champion)),
        "previous_champion": dg.MetadataValue.text(str(previous)),
        "labelled_rows": dg.MetadataValue.int(record["rows"]),
        "positives": dg.MetadataValue.int(record["positives"]),
        "metrics": markdown_table(rows, ["model", *LIVE_METRICS]),
    }
    value = record.get("metrics", {}).get(metric)
    if value is not None:
        metadata[f"live_{metric}"] = dg.MetadataValue.float(value)
    return dg.MaterializeResult(metadata=metadata, check_results=[dg.AssetCheckResult(
        check_name="live_within_policy", passed=verdict.action not in ("retrain", "rollback"),
        severity=dg.AssetCheckSeverity.WARN,
        metadata={"action": verdict.action, "reason": verdict.reason},
    )])
