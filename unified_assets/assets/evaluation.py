"""Evaluation group: one report per candidate on the fixed holdout beside the champion,
judged by the policy's gates (checks with numbers against the policy)."""

import time

import dagster as dg

from resources.artifact_store import ArtifactStore
from resources.decision_store import DecisionStore
from resources.mlflow_registry import MlflowRegistry, RegisteredCandidate
from resources.policy import PolicyResource
from unified_assets.assets.models import CANDIDATE_FAMILIES
from unified_assets.compute import CPU_LIGHT
from unified_assets.gates import FAIRNESS, IMPROVEMENT, INFORMATIONAL, QUALITY, GateResult, judge
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
}


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
    keys = ["roc_auc", "pr_auc", "f1", "recall", "precision", "brier", "latency_ms_per_1k"]
    return markdown_table(
        [{"metric": k, "candidate": report["overall"][k], "champion": champion.get(k)}
         for k in keys],
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
            for check in (QUALITY, IMPROVEMENT, FAIRNESS, INFORMATIONAL)
        ],
        automation_condition=dg.AutomationCondition.eager(),
        **CPU_LIGHT.asset_kwargs(),
    )
    def _evaluation(
        context: dg.AssetExecutionContext,
        candidate: RegisteredCandidate,
        training_set: TrainingSet,
        mlflow_registry: MlflowRegistry,
        decisions: DecisionStore,
        store: ArtifactStore,
        policy: PolicyResource,
    ):
        from unified_assets.ml.evidently_report import evidently_html

        promotion = policy.policy.promotion
        report, scorer = evaluate_on_holdout(
            mlflow_registry, decisions, candidate, training_set, promotion.operating_threshold
        )
        holdout_scores = report.pop("_holdout_scores")
        html = evidently_html(
            training_set.train, scorer(training_set.train), training_set.holdout, holdout_scores,
            training_set.numeric_features, training_set.categorical_features, training_set.target,
        )
        report["evidently_report_uri"] = store.write_bytes(
            report_key(candidate.model_name, candidate.version, "html"), html.encode()
        )
        verdict = judge(report, promotion)
        report["gates"] = {n: {"passed": g.passed, "message": g.message}
                           for n, g in verdict.gates.items()}
        report["passed_gates"] = verdict.passed
        report["report_uri"] = store.write_json(
            report_key(candidate.model_name, candidate.version), report
        )
        champion = report["champion"]
        yield dg.Output(
            report,
            metadata={
                "model_version": dg.MetadataValue.text(candidate.version),
                "passed_gates": verdict.passed,
                "report": dg.MetadataValue.url(report["report_uri"]),
                "evidently_report": dg.MetadataValue.url(report["evidently_report_uri"]),
                **numbers(report["overall"]),
                "vs_champion": _comparison_table(report),
                "champion_version": dg.MetadataValue.text(
                    champion["version"] if champion else "none yet"
                ),
                "segments": markdown_table(report["segments"], SEGMENT_COLUMNS),
            },
        )
        for gate_name, gate in verdict.gates.items():
            severity = (dg.AssetCheckSeverity.WARN if gate_name == INFORMATIONAL
                        else dg.AssetCheckSeverity.ERROR)
            yield check_result(gate, severity)

    return _evaluation


EVALUATION_ASSETS = [build_evaluation_asset(family) for family in CANDIDATE_FAMILIES]
