"""Evaluation group: one report per candidate on the fixed holdout beside the champion,
judged by the policy's gates (checks with numbers against the policy)."""

import time
from typing import Any

import dagster as dg

from resources.artifact_store import ArtifactStore
from resources.decision_store import DecisionStore
from resources.mlflow_registry import MlflowRegistry, RegisteredCandidate
from resources.policy import PolicyResource
from unified_assets.assets.models import CANDIDATE_FAMILIES
from unified_assets.compute import CPU_LIGHT
from unified_assets.gates import (
    FAIRNESS,
    IMPROVEMENT,
    INFORMATIONAL,
    LEAKAGE,
    QUALITY,
    CandidateFailure,
    GateResult,
    judge,
)
from unified_assets.metadata import OWNERS, markdown_table, numbers
from unified_assets.ml.training_data import TrainingSet

SEGMENT_COLUMNS = ["segment", "value", "rows", "positives", "roc_auc", "pr_auc", "recall", "f1"]
CHECK_DESCRIPTIONS = {
    QUALITY: "Every gating metric meets the policy's floor or ceiling on the holdout.",
    IMPROVEMENT: "Beats the current champion on the same holdout by the policy's margin "
    "(passes, and says so, when there is no champion yet).",
    FAIRNESS: "Every counted segment is above the policy floor and the gap between segments of "
    "a column is within max_disparity.",
    INFORMATIONAL: "Metrics the policy tracks without gating (WARN only).",
    LEAKAGE: "Too good to be true: holdout ROC AUC at or above the policy's max_holdout_auc, or "
    "one feature alone separating the target (WARN unless promotion.leakage.blocking).",
}
COMPARED = ["roc_auc", "pr_auc", "pr_auc_lift", "f1", "recall", "precision", "brier", "brier_skill",
            "latency_ms_per_1k"]


def report_key(model_name: str, version: str, suffix: str = "json") -> str:
    return f"reports/{model_name}/v{version}.{suffix}"


def score_holdout(registry: MlflowRegistry, model_name: str, version: str, frame) -> tuple:
    """Scores of a registered version, its scorer, and its latency per 1,000 rows."""
    scorer = registry.load_scorer(model_name, version)
    started = time.perf_counter()
    scores = scorer(frame)
    latency_ms = (time.perf_counter() - started) * 1000 * 1000 / max(len(frame), 1)
    return scores, scorer, latency_ms


def _metrics(training: TrainingSet, scores, threshold: float, latency_ms: float) -> dict:
    from unified_assets.ml.metrics import binary_metrics, segment_metrics

    holdout = training.holdout
    y = holdout[training.target].to_numpy()
    return {
        "overall": binary_metrics(y, scores, threshold) | {"latency_ms_per_1k": latency_ms},
        "segments": segment_metrics(holdout, y, scores, training.segment_columns, threshold),
    }


def score_champion(registry: MlflowRegistry, decisions: DecisionStore, model_name: str,
                   version: str, frame) -> tuple:
    """`score_holdout` for the champion; a champion that cannot be scored (version deleted,
    artifacts gone) blocks the comparison with an incident naming what is missing, since
    gating against "no champion" would wave any candidate through."""
    try:
        if not registry.version_exists(model_name, version):
            raise LookupError("the model version is no longer in the registry")
        source = registry.client().get_model_version(model_name, version).source
    except Exception as error:  # noqa: BLE001 - any registry failure means the same to the gate
        what = _first_line(error)
    else:
        try:
            return score_holdout(registry, model_name, version, frame)
        except Exception as error:  # noqa: BLE001 - any load failure means the same to the gate
            what = f"its model files at {source} cannot be loaded (MLflow: {_first_line(error)})"
    message = (f"champion v{version} of {model_name} (models:/{model_name}/{version}) cannot "
               f"be scored: {what}. Candidates cannot be compared with it; roll back to an "
               "earlier champion (`unified-ai rollback`) or restore its artifacts")
    decisions.record_incident(kind="champion_unusable", model_name=model_name, actor="evaluation",
                              reason=message, details={"version": version})
    raise dg.Failure(message)


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def evaluate_on_holdout(
    registry: MlflowRegistry, decisions: DecisionStore, candidate: RegisteredCandidate,
    training: TrainingSet, threshold: float,
) -> tuple[dict, object]:
    """The candidate's report (with the champion's numbers on the same rows) and its scorer.
    The champion is the ledger's, not whatever the alias says."""
    from unified_assets.champion import ChampionLedger

    scores, scorer, latency_ms = score_holdout(
        registry, candidate.model_name, candidate.version, training.holdout
    )
    report = {
        "family": candidate.family,
        "model_name": candidate.model_name,
        "version": candidate.version,
        "threshold": threshold,
        "training_batches": training.batches,
        "holdout_rows": len(training.holdout),
        **_metrics(training, scores, threshold, latency_ms),
        "champion": None,
    }
    champion = ChampionLedger(decisions, registry).champion(candidate.model_name)
    if champion is not None and champion != candidate.version:
        champion_scores, _, champion_latency = score_champion(
            registry, decisions, candidate.model_name, champion, training.holdout
        )
        report["champion"] = {"version": champion,
                              **_metrics(training, champion_scores, threshold, champion_latency)}
    report["_holdout_scores"] = scores
    return report, scorer


def _comparison_table(report: dict) -> dg.MarkdownMetadataValue:
    champion = (report["champion"] or {}).get("overall", {})
    return markdown_table(
        [{"metric": k, "candidate": report["overall"].get(k), "champion": champion.get(k)}
         for k in COMPARED],
        ["metric", "candidate", "champion"],
    )


def check_result(gate: GateResult, severity: dg.AssetCheckSeverity) -> dg.AssetCheckResult:
    columns = list(gate.rows[0]) if gate.rows else []
    return dg.AssetCheckResult(
        check_name=gate.name,
        passed=gate.passed,
        severity=severity,
        description=gate.message,
        metadata={
            "verdict": dg.MetadataValue.text(gate.message),
            "values_vs_policy": markdown_table(gate.rows, columns) if gate.rows
            else dg.MetadataValue.md("no values"),
        },
    )


def failed_report(family: str, model_name: str, version: str | None, error: str) -> dict:
    """The report of a candidate that could not be trained or evaluated: it fails every gate
    (gates.judge), and the run goes on to select among the others."""
    return {"family": family, "model_name": model_name, "version": version, "error": error,
            "overall": {}, "segments": [], "champion": None, "report_uri": None,
            "training_batches": None}


def _evaluate(context: dg.AssetExecutionContext, candidate: RegisteredCandidate,
              training: TrainingSet, registry: MlflowRegistry, decisions: DecisionStore,
              store: ArtifactStore, promotion) -> dict:
    """The candidate's full report. A failure of this candidate (it cannot be scored, its
    metrics cannot be computed) becomes an error report; an unusable champion still fails the
    step (dg.Failure), since it concerns every candidate alike."""
    from unified_assets.ml.evidently_report import evidently_html
    from unified_assets.ml.metrics import single_feature_aucs

    try:
        report, scorer = evaluate_on_holdout(registry, decisions, candidate, training,
                                             promotion.operating_threshold)
    except dg.Failure:
        raise
    except Exception as error:  # noqa: BLE001 - this candidate's own failure, reported as such
        return failed_report(candidate.family, candidate.model_name, candidate.version,
                             f"evaluation failed: {type(error).__name__}: {_first_line(error)}")
    holdout_scores = report.pop("_holdout_scores")
    report["feature_auc"] = single_feature_aucs(
        training.train, training.holdout, training.target, training.numeric_features,
        training.categorical_features)
    try:
        html = evidently_html(
            training.train, scorer(training.train), training.holdout, holdout_scores,
            training.numeric_features, training.categorical_features, training.target,
        )
        report["evidently_report_uri"] = store.write_bytes(
            report_key(candidate.model_name, candidate.version, "html"), html.encode()
        )
    except Exception as error:  # noqa: BLE001 - a report for people; the gates do not need it
        report["evidently_report_uri"] = None
        report["evidently_error"] = f"{type(error).__name__}: {_first_line(error)}"
        context.log.warning(f"Evidently report not written: {report['evidently_error']}")
    return report


def _metadata(report: dict) -> dict:
    champion = report["champion"]
    evidently = report.get("evidently_report_uri")
    return {
        "model_version": dg.MetadataValue.text(report["version"]),
        "passed_gates": report["passed_gates"],
        "report": dg.MetadataValue.url(report["report_uri"]),
        "evidently_report": dg.MetadataValue.url(evidently) if evidently
        else dg.MetadataValue.text(f"not written: {report.get('evidently_error')}"),
        **numbers(report["overall"]),
        "vs_champion": _comparison_table(report),
        "champion_version": dg.MetadataValue.text(champion["version"] if champion else "none yet"),
        "segments": markdown_table(report["segments"], SEGMENT_COLUMNS),
        "single_feature_auc": markdown_table(
            [{"feature": k, "roc_auc_alone": v} for k, v in
             sorted(report.get("feature_auc", {}).items(), key=lambda kv: -kv[1])],
            ["feature", "roc_auc_alone"]),
    }


def build_evaluation_asset(family: str) -> dg.AssetsDefinition:
    name = f"evaluation_{family}"

    @dg.asset(
        name=name,
        ins={"candidate": dg.AssetIn(key=f"model_{family}"), "training_set": dg.AssetIn()},
        group_name="evaluation",
        kinds={"mlflow", "evidently"},
        owners=OWNERS,
        description=(
            f"Evaluation of the {family} candidate's registered version on the fixed holdout at "
            "the policy's operating threshold: ROC AUC, PR AUC, F1, recall, Brier, latency per "
            "1,000 rows, overall and per segment, with the champion's numbers on the same rows, "
            "and an Evidently report (classification quality, holdout-vs-training drift). Checks "
            "judge it against the policy; a failing candidate is never selected as challenger."
        ),
        check_specs=[
            dg.AssetCheckSpec(check, asset=name, description=CHECK_DESCRIPTIONS[check])
            for check in (QUALITY, IMPROVEMENT, FAIRNESS, INFORMATIONAL, LEAKAGE)
        ],
        automation_condition=dg.AutomationCondition.eager(),
        **CPU_LIGHT.asset_kwargs(),
    )
    def _evaluation(
        context: dg.AssetExecutionContext,
        candidate: Any,  # RegisteredCandidate, or CandidateFailure when training failed
        training_set: TrainingSet,
        mlflow_registry: MlflowRegistry,
        decisions: DecisionStore,
        store: ArtifactStore,
        policy: PolicyResource,
    ):
        promotion = policy.policy.promotion
        if isinstance(candidate, CandidateFailure):
            report = failed_report(candidate.family, candidate.model_name, None,
                                   f"training failed: {candidate.error}")
        else:
            report = _evaluate(context, candidate, training_set, mlflow_registry, decisions, store,
                               promotion)
        verdict = judge(report, promotion)
        report["gates"] = {n: {"passed": g.passed, "message": g.message}
                           for n, g in verdict.gates.items()}
        report["passed_gates"] = verdict.passed
        if not report.get("error"):  # stored with its verdict, as approvals and rollbacks cite it
            report["report_uri"] = store.write_json(
                report_key(report["model_name"], report["version"]), report)
        if report.get("error"):
            context.log.error(f"{family} candidate not evaluated: {report['error']}")
            yield dg.Output(report, metadata={
                "model_version": dg.MetadataValue.text(str(report.get("version") or "none")),
                "passed_gates": False,
                "error": dg.MetadataValue.text(report["error"]),
            })
        else:
            yield dg.Output(report, metadata=_metadata(report))
        for gate_name, gate in verdict.gates.items():
            warn = gate_name == INFORMATIONAL or (gate_name == LEAKAGE and not promotion.leakage.blocking)
            yield check_result(gate, dg.AssetCheckSeverity.WARN if warn else dg.AssetCheckSeverity.ERROR)

    return _evaluation


EVALUATION_ASSETS = [build_evaluation_asset(family) for family in CANDIDATE_FAMILIES]
