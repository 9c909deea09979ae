"""Evaluation group: one report per candidate on the fixed holdout beside the champion,
judged by the policy's gates (checks with numbers against the policy)."""

import json
import time
from typing import Any

import dagster as dg

from resources.decision_store import DecisionStore
from resources.mlflow_registry import MlflowRegistry, RegisteredCandidate
from resources.policy import PolicyResource
from unified_assets.candidates import Candidate
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
from unified_assets.metadata import OWNERS, fmt, listed, markdown_table, numbers, placement_metadata
from unified_assets.ml.training_data import TrainingSet
from unified_assets.policy import PromotionPolicy
from unified_assets.values import (
    ChampionNumbers,
    EvaluationReport,
    GateOutcome,
    ReportLinks,
)

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
# What each evaluation check means for promotion. The blocking gates are not Dagster-blocking
# here: a failed blocking check would skip the challenger, which must still compare the other
# candidate; the challenger's own blocking checks are what stop promotion.
HOLDS_PROMOTION = {
    QUALITY: "yes", IMPROVEMENT: "yes", FAIRNESS: "yes", INFORMATIONAL: "no",
    LEAKAGE: "when promotion.leakage.blocking",
}
_BLOCKS = ("Blocks promotion (ERROR): a candidate failing it is never chosen as challenger, and "
           "the challenger's blocking checks stop promotion. Not Dagster-blocking on this asset, "
           "so the other candidate is still compared. ")
ROLE = {
    QUALITY: _BLOCKS, IMPROVEMENT: _BLOCKS, FAIRNESS: _BLOCKS,
    INFORMATIONAL: "Informs only (WARN): never holds promotion back. ",
    LEAKAGE: "Blocks promotion like the gates above when promotion.leakage.blocking is true "
             "(then ERROR), else informs only (WARN). ",
}
SUMMARY_METRICS = {"roc_auc": "ROC AUC", "pr_auc": "PR AUC", "f1": "F1", "recall": "recall",
                   "precision": "precision", "brier": "Brier"}
REPORT_JSON = "evaluation_report.json"
COMPARED = ["roc_auc", "pr_auc", "pr_auc_lift", "f1", "recall", "precision", "brier", "brier_skill",
            "latency_ms_per_1k"]


def cited_report(instance: dg.DagsterInstance, family: str | None, version: str) -> str | None:
    """The evaluation report a decision or an incident cites for `version`: the MLflow
    artifact URI its evaluation recorded (None when never evaluated or not logged)."""
    if not family:
        return None
    records = instance.fetch_materializations(dg.AssetKey(f"evaluation_{family}"),
                                              limit=100).records
    for record in records:  # newest first
        metadata = record.asset_materialization.metadata
        if "model_version" in metadata and str(metadata["model_version"].value) == version:
            uri = metadata.get("report_uri")
            return str(uri.value) if uri is not None and str(uri.value).startswith("runs:/") \
                else None
    return None


def score_holdout(registry: MlflowRegistry, model_name: str, version: str, frame) -> tuple:
    """Scores of a registered version, its scorer, and its latency per 1,000 rows."""
    scorer = registry.load_scorer(model_name, version)
    started = time.perf_counter()
    scores = scorer(frame)
    latency_ms = (time.perf_counter() - started) * 1000 * 1000 / max(len(frame), 1)
    return scores, scorer, latency_ms


def _metrics(training: TrainingSet, scores, threshold: float, latency_ms: float
             ) -> tuple[dict, list[dict]]:
    """(overall metrics, per-segment rows) of scores on the holdout."""
    from unified_assets.ml.metrics import binary_metrics, segment_metrics

    holdout = training.holdout
    y = holdout[training.target].to_numpy()
    return (binary_metrics(y, scores, threshold) | {"latency_ms_per_1k": latency_ms},
            segment_metrics(holdout, y, scores, training.segment_columns, threshold))


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
) -> tuple[EvaluationReport, object, object]:
    """The candidate's report (with the champion's numbers on the same rows), its scorer and
    its holdout scores.
    The champion is the ledger's, not whatever the alias says."""
    from unified_assets.services.champion import ChampionLedger

    scores, scorer, latency_ms = score_holdout(
        registry, candidate.model_name, candidate.version, training.holdout
    )
    overall, segments = _metrics(training, scores, threshold, latency_ms)
    report = EvaluationReport(
        family=candidate.family, model_name=candidate.model_name, version=candidate.version,
        threshold=threshold, training_batches=list(training.batches),
        holdout_rows=len(training.holdout), overall=overall, segments=segments)
    champion = ChampionLedger(decisions, registry).champion(candidate.model_name)
    if champion is not None and champion != candidate.version:
        champion_scores, _, champion_latency = score_champion(
            registry, decisions, candidate.model_name, champion, training.holdout
        )
        report.champion = ChampionNumbers(
            champion, *_metrics(training, champion_scores, threshold, champion_latency))
    return report, scorer, scores


def _comparison_table(report: EvaluationReport) -> dg.MarkdownMetadataValue:
    champion = report.champion.overall if report.champion else {}
    return markdown_table(
        [{"metric": k, "candidate": report.overall.get(k), "champion": champion.get(k)}
         for k in COMPARED],
        ["metric", "candidate", "champion"],
    )


def check_result(gate: GateResult, severity: dg.AssetCheckSeverity,
                 blocks_promotion: bool | None = None) -> dg.AssetCheckResult:
    """The gate as a check result; `blocks_promotion`, when given, says in the UI whether this
    failure holds promotion back (the check itself may not be Dagster-blocking)."""
    columns = list(gate.rows[0]) if gate.rows else []
    metadata = {
        "verdict": dg.MetadataValue.text(gate.message),
        "values_vs_policy": markdown_table(gate.rows, columns) if gate.rows
        else dg.MetadataValue.md("no values"),
    }
    if blocks_promotion is not None:
        metadata["blocks_promotion"] = dg.MetadataValue.bool(blocks_promotion)
    return dg.AssetCheckResult(
        check_name=gate.name,
        passed=gate.passed,
        severity=severity,
        description=gate.message,
        metadata=metadata,
    )


def failed_report(family: str, model_name: str, version: str | None,
                  error: str) -> EvaluationReport:
    """The report of a candidate that could not be trained or evaluated: it fails every gate
    (gates.judge), and the run goes on to select among the others."""
    return EvaluationReport(family=family, model_name=model_name, version=version, error=error)


def evaluate_candidate(candidate: RegisteredCandidate, training: TrainingSet,
                       registry: MlflowRegistry, decisions: DecisionStore,
                       promotion: PromotionPolicy) -> EvaluationReport:
    """The candidate's full report. A failure of this candidate (it cannot be scored, its
    metrics cannot be computed) becomes an error report; an unusable champion still fails the
    step (dg.Failure), since it concerns every candidate alike. Evidently's HTML is not built
    here: `quality_report_<name>` builds it after promotion has its answer."""
    from unified_assets.ml.metrics import single_feature_aucs

    try:
        report, _, _ = evaluate_on_holdout(
            registry, decisions, candidate, training, promotion.operating_threshold)
    except dg.Failure:
        raise
    except Exception as error:  # noqa: BLE001 - this candidate's own failure, reported as such
        return failed_report(candidate.family, candidate.model_name, candidate.version,
                             f"evaluation failed: {type(error).__name__}: {_first_line(error)}")
    report.feature_auc = single_feature_aucs(
        training.train, training.holdout, training.target, training.numeric_features,
        training.categorical_features)
    return report


def log_report(registry: MlflowRegistry, run_id: str, folder: str,
               report: EvaluationReport) -> None:
    """Log the judged report as JSON in `folder` of the candidate's MLflow run; sets its
    `runs:/` URI and the links that open it in the MLflow UI."""
    report.report_uri = f"runs:/{run_id}/{folder}/{REPORT_JSON}"
    links = registry.log_reports(
        run_id, folder, {REPORT_JSON: json.dumps(report.as_json(), indent=2, default=str)})
    link = links[REPORT_JSON]
    report.links = ReportLinks(mlflow_run=link.run_page, report=link.page, report_file=link.file)


def _publish(context: dg.AssetExecutionContext, registry: MlflowRegistry, run_id: str,
             report: EvaluationReport) -> None:
    """Log the judged report to the candidate's MLflow run, with links that open it over HTTP
    in the MLflow UI; approvals and rollbacks cite it by its MLflow artifact URI. The report
    itself is the asset's value (Dagster's IO manager), so it is kept even when MLflow is
    unreachable. One folder per Dagster run: an older materialization's links keep showing
    its own report after a re-evaluation."""
    try:
        log_report(registry, run_id, f"evaluation/{context.run_id[:8]}", report)
    except Exception as error:  # noqa: BLE001 - reports for people; the gates do not need them
        report.links, report.report_uri = ReportLinks(), None
        report.mlflow_error = f"{type(error).__name__}: {_first_line(error)}"
        context.log.warning(f"report not logged to MLflow run {run_id}: {report.mlflow_error}")


def summary(report: EvaluationReport) -> str:
    """A few lines that answer most questions without opening a report: who, the verdict and
    why, the key metrics beside the champion's, the weakest segment."""
    champion = report.champion
    who = report.who
    who += f" vs champion v{champion.version}" if champion else " (no champion yet)"
    blocking = report.blocking_gates or (QUALITY, IMPROVEMENT, FAIRNESS)
    failed = [f"{name} ({g.message})" for name, g in report.gates.items()
              if not g.passed and name in blocking]
    warned = [name for name, g in report.gates.items() if not g.passed and name not in blocking]
    verdict = ("passed every blocking gate" if report.passed_gates else
               "held back: " + "; ".join(failed) if failed else "held back")
    if warned:
        verdict += f" (warnings: {listed(warned)})"
    overall, theirs = report.overall, champion.overall if champion else {}
    metrics = []
    for key, label in SUMMARY_METRICS.items():
        value = overall.get(key)
        if value is None:
            continue
        text = f"{label} {fmt(value)}"
        if theirs.get(key) is not None:
            text += f" (champion {fmt(theirs[key])}, {value - theirs[key]:+.4f})"
        metrics.append(text)
    lines = [f"**{who}**: {verdict}", " · ".join(metrics)]
    scored = [s for s in report.segments if s.get("roc_auc") is not None]
    if scored:
        weakest = min(scored, key=lambda s: s["roc_auc"])
        lines.append(f"weakest segment: {weakest['segment']}={weakest['value']} ROC AUC "
                     f"{fmt(weakest['roc_auc'])} on {weakest.get('rows')} rows")
    return "\n\n".join(lines)


def _link(url: str | None, missing: str) -> dg.MetadataValue:
    return dg.MetadataValue.url(url) if url else dg.MetadataValue.text(missing)


def _metadata(report: EvaluationReport) -> dict:
    champion, links = report.champion, report.links
    not_logged = f"not logged to MLflow: {report.mlflow_error}"
    return {
        "summary": dg.MetadataValue.md(summary(report)),
        "model_version": dg.MetadataValue.text(str(report.version)),
        "passed_gates": report.passed_gates,
        "report": _link(links.report, not_logged),
        "report_file": _link(links.report_file, not_logged),
        "mlflow_run": _link(links.mlflow_run, not_logged),
        "report_uri": dg.MetadataValue.text(report.report_uri or not_logged),
        **numbers(report.overall),
        "vs_champion": _comparison_table(report),
        "champion_version": dg.MetadataValue.text(champion.version if champion else "none yet"),
        "segments": markdown_table(report.segments, SEGMENT_COLUMNS),
        "single_feature_auc": markdown_table(
            [{"feature": k, "roc_auc_alone": v} for k, v in
             sorted(report.feature_auc.items(), key=lambda kv: -kv[1])],
            ["feature", "roc_auc_alone"]),
    }


def build_evaluation_asset(candidate: Candidate) -> dg.AssetsDefinition:
    """The `evaluation_<name>` asset of one declared candidate."""
    family, name = candidate.name, candidate.evaluation_asset

    @dg.asset(
        name=name,
        ins={"candidate": dg.AssetIn(key=candidate.model_asset), "training_set": dg.AssetIn()},
        group_name="evaluation",
        kinds={"mlflow"},
        owners=OWNERS,
        description=(
            f"Evaluation of the {family} candidate's registered version on the fixed holdout at "
            "the policy's operating threshold: ROC AUC, PR AUC, F1, recall, Brier, latency per "
            "1,000 rows, overall and per segment, with the champion's numbers on the same rows. "
            "The judged JSON report is logged to the candidate's MLflow run and linked from "
            "metadata (MLflow UI), with a short summary; Evidently's HTML is "
            f"quality_report_{family}. Checks judge it against the policy; a candidate failing "
            "a blocking gate is never selected as challenger."
        ),
        check_specs=[
            dg.AssetCheckSpec(check, asset=name, description=ROLE[check] + CHECK_DESCRIPTIONS[check],
                              metadata={"blocks_promotion": HOLDS_PROMOTION[check]})
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
        policy: PolicyResource,
    ):
        promotion = policy.policy.promotion
        if isinstance(candidate, CandidateFailure):
            report = failed_report(candidate.family, candidate.model_name, None,
                                   f"training failed: {candidate.error}")
        else:
            report = evaluate_candidate(candidate, training_set, mlflow_registry, decisions,
                                        promotion)
        verdict = judge(report, promotion)
        report.gates = {n: GateOutcome(g.passed, g.message) for n, g in verdict.gates.items()}
        report.passed_gates = verdict.passed
        report.blocking_gates = tuple(verdict.blocking)  # leakage too when the policy says so
        if not report.error:  # stored with its verdict, as approvals and rollbacks cite it
            _publish(context, mlflow_registry, candidate.run_id, report)
        if report.error:
            context.log.error(f"{family} candidate not evaluated: {report.error}")
            yield dg.Output(report, metadata={
                "model_version": dg.MetadataValue.text(str(report.version or "none")),
                "passed_gates": False,
                "error": dg.MetadataValue.text(report.error),
                **placement_metadata(context, CPU_LIGHT, policy.policy.placement),
            })
        else:
            yield dg.Output(report, metadata=_metadata(report) | placement_metadata(
                context, CPU_LIGHT, policy.policy.placement))
        for gate_name, gate in verdict.gates.items():
            warn = gate_name == INFORMATIONAL or (gate_name == LEAKAGE and not promotion.leakage.blocking)
            yield check_result(gate, dg.AssetCheckSeverity.WARN if warn else dg.AssetCheckSeverity.ERROR,
                               blocks_promotion=not warn)

    return _evaluation

