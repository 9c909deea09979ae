"""Selection and promotion: the challenger is the best candidate that passed every gate;
the production model is whichever version holds the MLflow `champion` alias."""

from datetime import UTC, datetime

import dagster as dg

from resources.mlflow_registry import CHALLENGER_ALIAS, CHAMPION_ALIAS, MlflowRegistry
from resources.policy import PolicyResource
from unified_assets.assets.evaluation import CHECK_DESCRIPTIONS, check_result
from unified_assets.assets.models import CANDIDATE_FAMILIES
from unified_assets.compute import CPU_LIGHT
from unified_assets.gates import BLOCKING_GATES, GateResult, judge, select_challenger
from unified_assets.metadata import OWNERS, markdown_table
from unified_assets.policy import HIGHER_IS_BETTER

SELECTED = "challenger_selected"
# The rule of ARCHITECTURE.md 5: a failed blocking check upstream never promotes, in this
# run or in any later automation tick.
PRODUCTION_CONDITION = (
    dg.AutomationCondition.eager() & dg.AutomationCondition.all_deps_blocking_checks_passed()
)


def _downstream(context: dg.AssetExecutionContext) -> list[str]:
    graph = context.job_def.asset_layer.asset_graph
    seen, stack = set(), [context.asset_key]
    while stack:
        for child in graph.get(stack.pop()).child_keys:
            if child not in seen:
                seen.add(child)
                stack.append(child)
    return sorted(k.to_user_string() for k in seen)


@dg.asset(
    ins={f"evaluation_{family}": dg.AssetIn() for family in CANDIDATE_FAMILIES},
    group_name="evaluation",
    kinds={"mlflow"},
    owners=OWNERS,
    description=(
        "The challenger: the best candidate (by the policy's improvement metric) that passed "
        "every blocking gate, marked with the MLflow `challenger` alias. Its blocking checks "
        "stop promotion when no candidate qualifies; metadata lists what was held back."
    ),
    check_specs=[
        dg.AssetCheckSpec(name, asset="challenger", blocking=True,
                          description=CHECK_DESCRIPTIONS[name])
        for name in BLOCKING_GATES
    ] + [
        dg.AssetCheckSpec(SELECTED, asset="challenger", blocking=True,
                          description="Some candidate passed every blocking gate.")
    ],
    automation_condition=dg.AutomationCondition.eager(),
    **CPU_LIGHT.asset_kwargs(),
)
def challenger(
    context: dg.AssetExecutionContext,
    mlflow_registry: MlflowRegistry,
    policy: PolicyResource,
    evaluation_sklearn: dict,
    evaluation_torch: dict,
):
    promotion = policy.policy.promotion
    reports = [evaluation_sklearn, evaluation_torch]
    chosen, verdicts = select_challenger(reports, promotion)
    model_name = reports[0]["model_name"]
    held_back = [] if chosen else _downstream(context)
    if chosen:
        mlflow_registry.set_alias(model_name, chosen["version"], CHALLENGER_ALIAS)
        reason = f"{chosen['family']} v{chosen['version']} passed every gate"
    else:
        reason = "no candidate passed every gate: " + " | ".join(
            f"{f} v{v.version}: {'; '.join(v.failures())}" for f, v in verdicts.items()
        )
        context.log.warning(f"{reason}; held back: {held_back}")
    value = {
        "model_name": model_name,
        "family": chosen["family"] if chosen else None,
        "version": chosen["version"] if chosen else None,
        "report_uri": chosen["report_uri"] if chosen else None,
        "training_batches": chosen["training_batches"] if chosen else None,
        "overall": chosen["overall"] if chosen else None,
        "reason": reason,
        "candidates": {f: {"version": v.version, "passed": v.passed, "failures": v.failures()}
                       for f, v in verdicts.items()},
    }
    yield dg.Output(
        value,
        metadata={
            "challenger_version": dg.MetadataValue.text(str(value["version"] or "none")),
            "reason": dg.MetadataValue.text(reason),
            "held_back": dg.MetadataValue.json(held_back),
            "candidates": markdown_table(
                [{"family": f, "version": v.version, "passed": v.passed,
                  "failed_gates": "; ".join(v.failures()) or "-"} for f, v in verdicts.items()],
                ["family", "version", "passed", "failed_gates"],
            ),
        },
    )
    metric = promotion.improvement.metric
    sign = 1.0 if HIGHER_IS_BETTER[metric] else -1.0
    subject = chosen or max(reports, key=lambda r: sign * (r["overall"][metric] or -1e9))
    subject_verdict = verdicts[subject["family"]] if chosen else judge(subject, promotion)
    for name in BLOCKING_GATES:
        gate = subject_verdict.gates[name]
        yield check_result(
            GateResult(gate.name, gate.passed, f"{subject['family']} v{subject['version']}: "
                       f"{gate.message}", gate.rows),
            dg.AssetCheckSeverity.ERROR,
        )
    yield dg.AssetCheckResult(
        check_name=SELECTED, passed=chosen is not None, severity=dg.AssetCheckSeverity.ERROR,
        description=reason,
        metadata={"reason": dg.MetadataValue.text(reason),
                  "held_back": dg.MetadataValue.json(held_back)},
    )


@dg.asset(
    ins={"challenger": dg.AssetIn()},
    group_name="deployment",
    kinds={"mlflow"},
    owners=OWNERS,
    description=(
        "The production model: moves the MLflow `champion` alias to the challenger that passed "
        "every gate, and records the previous champion, the evaluation it passed on and the "
        "data it was trained on. Never runs after a failed blocking check."
    ),
    automation_condition=PRODUCTION_CONDITION,
    **CPU_LIGHT.asset_kwargs(),
)
def production_model(
    context: dg.AssetExecutionContext,
    mlflow_registry: MlflowRegistry,
    challenger: dict,
) -> dg.Output[dict]:
    model_name = challenger["model_name"]
    if challenger["version"] is None:
        raise dg.Failure(f"refusing to promote: {challenger['reason']}")
    previous = mlflow_registry.alias_version(model_name)
    promoted = previous != challenger["version"]
    if promoted:
        mlflow_registry.set_alias(model_name, challenger["version"], CHAMPION_ALIAS)
        mlflow_registry.tag_version(model_name, challenger["version"], {
            "promoted_at": datetime.now(UTC).isoformat(),
            "previous_champion": previous or "none",
            "dagster_run_id": context.run_id,
        })
    reason = (f"promoted {challenger['family']} v{challenger['version']} "
              f"(previous champion: {previous or 'none'})" if promoted
              else f"v{previous} is already champion")
    record = {
        "model_name": model_name,
        "champion_version": challenger["version"],
        "previous_champion": previous,
        "promoted": promoted,
        "reason": reason,
        "decided_at": datetime.now(UTC).isoformat(),
        "evaluation_report": challenger["report_uri"],
        "training_batches": challenger["training_batches"],
    }
    return dg.Output(
        record,
        metadata={
            "champion_version": dg.MetadataValue.text(challenger["version"]),
            "previous_champion": dg.MetadataValue.text(previous or "none"),
            "promoted": promoted,
            "reason": dg.MetadataValue.text(reason),
            "evaluation_report": dg.MetadataValue.url(challenger["report_uri"]),
            "training_batches": dg.MetadataValue.json(challenger["training_batches"]),
            "holdout_metrics": markdown_table(
                [{"metric": k, "value": v} for k, v in challenger["overall"].items()],
                ["metric", "value"],
            ),
        },
    )
