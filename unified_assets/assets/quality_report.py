"""Evidently's classification-quality report per candidate, for people.

Building the HTML takes seconds (more than the rest of an evaluation together) and no gate
reads it, so it is its own asset downstream of `evaluation_<name>`, materialized by the
report automation at a lower run priority: promotion never waits for a page a person may
open later, and the report still appears beside the judged JSON in the candidate's MLflow run.
"""

from typing import Any

import dagster as dg

from resources.mlflow_registry import MlflowRegistry
from resources.policy import PolicyResource
from unified_assets.candidates import Candidate
from unified_assets.compute import CPU_REPORT
from unified_assets.metadata import OWNERS, placement_metadata
from unified_assets.ml.training_data import TrainingSet
from unified_assets.values import EvaluationReport

EVIDENTLY_HTML = "evidently_report.html"
# Asset tag marking reports for people: their runs come from their own automation sensor at
# a lower run priority, and no lifecycle job waits for them.
REPORT_TAG = "unified-ai/report"


def report_folder(report: EvaluationReport, fallback: str) -> str:
    """The MLflow artifact folder of the evaluation's judged JSON (`runs:/<run>/<folder>/
    evaluation_report.json`), so the HTML sits beside the report it illustrates; `fallback`
    when the JSON was never logged."""
    uri = report.report_uri or ""
    if uri.startswith("runs:/") and uri.count("/") >= 3:
        return uri[len("runs:/"):].split("/", 1)[1].rsplit("/", 1)[0]
    return fallback


def build_quality_report_asset(candidate: Candidate) -> dg.AssetsDefinition:
    """The `quality_report_<name>` asset of one declared candidate."""
    family, name = candidate.name, f"quality_report_{candidate.name}"

    @dg.asset(
        name=name,
        ins={"evaluation": dg.AssetIn(key=candidate.evaluation_asset),
             "training_set": dg.AssetIn()},
        group_name="evaluation",
        kinds={"evidently", "mlflow"},
        tags={REPORT_TAG: "evidently"},
        owners=OWNERS,
        description=(
            f"Evidently's report on the {family} candidate's evaluated version: classification "
            "quality on the holdout and holdout-vs-training drift of features and scores, "
            "logged to the candidate's MLflow run beside the judged evaluation report and "
            "linked from metadata (MLflow UI). For people: no gate reads it, so promotion "
            "does not wait for it (report automation builds it after each evaluation)."
        ),
        automation_condition=dg.AutomationCondition.eager(),
        **CPU_REPORT.asset_kwargs(),
    )
    def _quality_report(
        context: dg.AssetExecutionContext,
        evaluation: EvaluationReport,
        training_set: TrainingSet,
        mlflow_registry: MlflowRegistry,
        policy: PolicyResource,
    ) -> dg.MaterializeResult:
        placement = placement_metadata(context, CPU_REPORT, policy.policy.placement)
        if evaluation.error or evaluation.version is None:
            return dg.MaterializeResult(metadata={
                "summary": dg.MetadataValue.text(
                    f"no report: the {family} candidate was not evaluated ({evaluation.error})"),
                **placement})
        if list(evaluation.training_batches or []) != list(training_set.batches):
            # The training set moved on since this evaluation: the rows would not be the
            # ones the gates judged. Fail loudly; the next evaluation brings its own report.
            raise dg.Failure(
                f"evaluation of {evaluation.who} was on batches "
                f"{evaluation.training_batches} but the training set is now "
                f"{list(training_set.batches)}: its report would show other rows")
        links = write_quality_report(mlflow_registry, evaluation, training_set,
                                     fallback_folder=f"evaluation/{context.run_id[:8]}")
        page = links[EVIDENTLY_HTML]
        context.log.info(f"Evidently report of {evaluation.who}: {page.page}")
        return dg.MaterializeResult(metadata={
            "summary": dg.MetadataValue.text(
                f"Evidently classification quality and holdout-vs-training drift of "
                f"{evaluation.who} on {evaluation.holdout_rows} holdout rows"),
            "model_version": dg.MetadataValue.text(str(evaluation.version)),
            "evidently_report": dg.MetadataValue.url(page.page),
            "evidently_report_file": dg.MetadataValue.url(page.file),
            "mlflow_run": dg.MetadataValue.url(page.run_page),
            **placement,
        })

    return _quality_report


def write_quality_report(registry: MlflowRegistry, evaluation: EvaluationReport,
                         training: TrainingSet, fallback_folder: str) -> dict[str, Any]:
    """Score the evaluated version on the training and holdout rows, build the Evidently HTML
    and log it to the version's MLflow run; its links by file name."""
    from unified_assets.ml.evidently_report import evidently_html

    model_name, version = evaluation.model_name, str(evaluation.version)
    scorer = registry.load_scorer(model_name, version)
    html = evidently_html(
        training.train, scorer(training.train), training.holdout, scorer(training.holdout),
        training.numeric_features, training.categorical_features, training.target,
    )
    run_id = registry.client().get_model_version(model_name, version).run_id
    return registry.log_reports(run_id, report_folder(evaluation, fallback_folder),
                                {EVIDENTLY_HTML: html})
