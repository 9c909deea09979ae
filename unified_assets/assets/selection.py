"""Selection: the challenger is the best candidate that passed every gate.

When none qualifies the challenger is *held*: an outcome, not an error. The step succeeds
without yielding its output (a Dagster conditional output), so approval and production_model
are skipped in the run, and its checks fail as warnings with the reasons. The checks stay
blocking, which keeps automation from requesting approval after a hold in a later tick.
"""

from collections.abc import Iterator

import dagster as dg

from resources.mlflow_registry import CHALLENGER_ALIAS, MlflowRegistry
from resources.policy import PolicyResource
from sensors.retrain import RETRAIN_TAG
from unified_assets.assets.evaluation import CHECK_DESCRIPTIONS, check_result
from unified_assets.candidates import Candidate
from unified_assets.compute import CPU_LIGHT
from unified_assets.gates import (
    BLOCKING_GATES,
    GateResult,
    choice_reason,
    judge,
    select_challenger,
)
from unified_assets.metadata import OWNERS, markdown_table, placement_metadata
from unified_assets.policy import metric_sign
from unified_assets.values import CandidateOutcome, ChallengerChoice, EvaluationReport

SELECTED = "challenger_selected"
HOLD_PREFIX = "no candidate qualified: "
HOLD_NOTE = (" When it fails, no candidate qualified: the challenger is not materialized, "
             "approval and production_model are skipped and the run stays green (a warning).")


# Evaluations a train_evaluate_promote run updated were judged by the challenger in that same
# run (selected, or held without materializing), so only evaluations updated elsewhere call
# for a new selection. Dagster's own exclusion (executed_with_root_target) reads the run's
# asset selection, which a sensor's run of the whole job does not record.
NEW_EVALUATIONS = dg.AutomationCondition.any_deps_match(
    (dg.AutomationCondition.newly_updated()
     & ~dg.AutomationCondition.executed_with_root_target()
     & ~dg.AutomationCondition.executed_with_tags(tag_keys={RETRAIN_TAG}))
    | dg.AutomationCondition.will_be_requested()
).with_label("new_evaluations_outside_a_retrain")
CHALLENGER_CONDITION = dg.AutomationCondition.eager().replace(
    "any_deps_updated", NEW_EVALUATIONS).with_label("eager_to_new_evaluations")


def _downstream(context: dg.AssetExecutionContext) -> list[str]:
    """The assets a hold keeps from running (named in the hold's metadata)."""
    graph = context.job_def.asset_layer.asset_graph
    seen, stack = set(), [context.asset_key]
    while stack:
        for child in graph.get(stack.pop()).child_keys:
            if child not in seen:
                seen.add(child)
                stack.append(child)
    return sorted(k.to_user_string() for k in seen)


def build_challenger(candidates: tuple[Candidate, ...]) -> dg.AssetsDefinition:
    """The challenger over every declared candidate's evaluation."""
    return dg.asset(
        name="challenger",
        ins={c.evaluation_asset: dg.AssetIn() for c in candidates},
        group_name="evaluation",
        kinds={"mlflow"},
        owners=OWNERS,
        description=(
            "The challenger: the best candidate (by the policy's improvement metric) that passed "
            "every blocking gate, marked with the MLflow `challenger` alias. When no candidate "
            "qualifies it is held: not materialized, approval and production_model skipped, the "
            "run green, and the check `challenger_selected` says why and what was held back."
        ),
        output_required=False,
        check_specs=[
            dg.AssetCheckSpec(name, asset="challenger", blocking=True,
                              description=CHECK_DESCRIPTIONS[name] + HOLD_NOTE)
            for name in BLOCKING_GATES
        ] + [
            dg.AssetCheckSpec(SELECTED, asset="challenger", blocking=True,
                              description="Some candidate passed every blocking gate." + HOLD_NOTE)
        ],
        automation_condition=CHALLENGER_CONDITION,
        **CPU_LIGHT.asset_kwargs(),
    )(_challenger)


def _challenger(
    context: dg.AssetExecutionContext,
    mlflow_registry: MlflowRegistry,
    policy: PolicyResource,
    **evaluations: EvaluationReport,
) -> Iterator[dg.Output | dg.AssetCheckResult]:
    promotion = policy.policy.promotion
    reports = list(evaluations.values())
    chosen, verdicts = select_challenger(reports, promotion)
    model_name = reports[0].model_name
    held_back = [] if chosen else _downstream(context)
    if chosen:
        mlflow_registry.set_alias(model_name, str(chosen.version), CHALLENGER_ALIAS)
        reason = choice_reason(chosen, reports, verdicts, promotion.improvement.metric)
    else:
        reason = HOLD_PREFIX + " | ".join(
            f"{f} v{v.version}: {'; '.join(v.failures())}" for f, v in verdicts.items()
        )
        context.log.info(f"held: {reason}; not run: {', '.join(held_back)}")
    candidates = markdown_table(
        [{"family": f, "version": v.version, "passed": v.passed,
          "failed_gates": "; ".join(v.failures()) or "-"} for f, v in verdicts.items()],
        ["family", "version", "passed", "failed_gates"],
    )
    if chosen:  # a hold yields no output: approval and production_model are skipped
        value = ChallengerChoice(
            model_name=model_name, reason=reason, chosen=chosen,
            candidates={f: CandidateOutcome(v.version, v.passed, v.failures(), v.error)
                        for f, v in verdicts.items()})
        yield dg.Output(
            value,
            metadata={
                "challenger_version": dg.MetadataValue.text(value.version),
                "reason": dg.MetadataValue.text(reason),
                "candidates": candidates,
                **placement_metadata(context, CPU_LIGHT, policy.policy.placement),
            },
        )
    # Pass or hold, never an error: a hold warns (run green); blocking keeps automation off.
    severity = dg.AssetCheckSeverity.ERROR if chosen else dg.AssetCheckSeverity.WARN
    metric = promotion.improvement.metric
    sign = metric_sign(metric)
    # With none chosen, the checks show the best evaluated candidate's gates (any, if all failed).
    evaluated = [r for r in reports if not r.error] or reports
    subject = chosen or max(evaluated, key=lambda r: (r.overall.get(metric) is not None,
                                                      sign * (r.overall.get(metric) or 0.0)))
    subject_verdict = verdicts[subject.family] if chosen else judge(subject, promotion)
    for name in BLOCKING_GATES:
        gate = subject_verdict.gates[name]
        yield check_result(
            GateResult(gate.name, gate.passed, f"{subject.who}: {gate.message}", gate.rows),
            severity,
        )
    yield dg.AssetCheckResult(
        check_name=SELECTED, passed=chosen is not None, severity=severity,
        description=reason,
        metadata={"reason": dg.MetadataValue.text(reason),
                  "held_back": dg.MetadataValue.json(held_back),
                  "candidates": candidates},
    )
