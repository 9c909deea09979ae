"""Evaluation group: one report per candidate on the fixed holdout, beside the champion."""


import time

import dagster as dg
from pydantic import Field

from resources.artifact_store import ArtifactStore
from resources.mlflow_registry import MlflowRegistry, RegisteredCandidate
from unified_assets.assets.models import CANDIDATE_FAMILIES
from unified_assets.compute import CPU_LIGHT
from unified_assets.metadata import OWNERS, markdown_table, numbers
from unified_assets.ml.training_data import TrainingSet

SEGMENT_COLUMNS = ["segment", "value", "rows", "positives", "roc_auc", "pr_auc", "recall", "f1"]


class EvaluationConfig(dg.Config):
    threshold: float = Field(
        default=0.2, gt=0.0, lt=1.0,
        description="Operating score threshold for F1, recall and precision.",
    )


def report_key(model_name: str, version: str) -> str:
    return f"reports/{model_name}/v{version}.json"


def score_holdout(registry: MlflowRegistry, model_name: str, version: str, holdout) -> tuple:
    """Scores of a registered version on the holdout, and its latency per 1,000 rows."""
    scorer = registry.load_scorer(model_name, version)
    started = time.perf_counter()
    scores = scorer(holdout)
    latency_ms = (time.perf_counter() - started) * 1000 * 1000 / max(len(holdout), 1)
    return scores, latency_ms


def evaluate_on_holdout(
    registry: MlflowRegistry, candidate: RegisteredCandidate, training: TrainingSet,
    threshold: float,
) -> dict:
    from unified_assets.ml.metrics import binary_metrics, segment_metrics

    holdout, y = training.holdout, training.holdout[training.target].to_numpy()
    scores, latency_ms = score_holdout(registry, candidate.model_name, candidate.version, holdout)
    report = {
        "family": candidate.family,
        "model_name": candidate.model_name,
        "version": candidate.version,
        "threshold": threshold,
        "training_batches": training.batches,
        "overall": binary_metrics(y, scores, threshold) | {"latency_ms_per_1k": latency_ms},
        "segments": segment_metrics(holdout, y, scores, training.segment_columns, threshold),
        "champion": None,
    }
    champion = registry.alias_version(candidate.model_name)
    if champion is not None and champion != candidate.version:
        champion_scores, champion_latency = score_holdout(
            registry, candidate.model_name, champion, holdout
        )
        report["champion"] = {
            "version": champion,
            "overall": binary_metrics(y, champion_scores, threshold)
            | {"latency_ms_per_1k": champion_latency},
        }
    return report


def _comparison_table(report: dict) -> dg.MarkdownMetadataValue:
    champion = (report["champion"] or {}).get("overall", {})
    keys = ["roc_auc", "pr_auc", "f1", "recall", "precision", "brier", "latency_ms_per_1k"]
    return markdown_table(
        [{"metric": k, "candidate": report["overall"][k], "champion": champion.get(k)}
         for k in keys],
        ["metric", "candidate", "champion"],
    )


def build_evaluation_asset(family: str) -> dg.AssetsDefinition:
    @dg.asset(
        name=f"evaluation_{family}",
        ins={"candidate": dg.AssetIn(key=f"model_{family}"), "training_set": dg.AssetIn()},
        group_name="evaluation",
        kinds={"mlflow", "pandas"},
        owners=OWNERS,
        description=(
            f"Evaluation of the {family} candidate's registered version on the fixed holdout: "
            "overall and per-segment metrics, latency, and the current champion's numbers on "
            "the same rows. The report is stored as JSON and linked from metadata."
        ),
        automation_condition=dg.AutomationCondition.eager(),
        **CPU_LIGHT.asset_kwargs(),
    )
    def _evaluation(
        context: dg.AssetExecutionContext,
        config: EvaluationConfig,
        candidate: RegisteredCandidate,
        training_set: TrainingSet,
        mlflow_registry: MlflowRegistry,
        store: ArtifactStore,
    ) -> dg.Output[dict]:
        report = evaluate_on_holdout(mlflow_registry, candidate, training_set, config.threshold)
        uri = store.write_json(report_key(candidate.model_name, candidate.version), report)
        report["report_uri"] = uri
        champion = report["champion"]
        return dg.Output(
            report,
            metadata={
                "model_version": dg.MetadataValue.text(candidate.version),
                "report": dg.MetadataValue.url(uri),
                **numbers(report["overall"]),
                "vs_champion": _comparison_table(report),
                "champion_version": dg.MetadataValue.text(
                    champion["version"] if champion else "none yet"
                ),
                "segments": markdown_table(report["segments"], SEGMENT_COLUMNS),
            },
        )

    return _evaluation


EVALUATION_ASSETS = [build_evaluation_asset(family) for family in CANDIDATE_FAMILIES]
