"""Evidently's quality report is built after the evaluation, off the promotion path: it never
shows rows other than the ones the gates judged, and a candidate that was not evaluated gets
no report rather than a failure. The upstream values are given by stand-in assets (in
memory); the real report and its link over HTTP are in test_report_links.py."""

from __future__ import annotations

import dagster as dg
import pandas as pd
import pytest

from resources import MlflowRegistry, PolicyResource
from unified_assets.assets.quality_report import build_quality_report_asset, report_folder
from unified_assets.candidates import SHIPPED
from unified_assets.ml.training_data import TrainingSet
from unified_assets.values import EvaluationReport


def _training(batches: list[str]) -> TrainingSet:
    frame = pd.DataFrame({"x": [0.1, 0.2], "y": [0, 1]})
    return TrainingSet(train=frame, holdout=frame, batches=batches, target="y",
                       numeric_features=["x"], categorical_features=[], segment_columns=[],
                       dataset_name="d")


def _report(settings, name: str, evaluation: EvaluationReport, training: TrainingSet):
    """Materialize `quality_report_<name>` on the given upstream values."""
    report = build_quality_report_asset(SHIPPED[name])

    @dg.asset(name=f"evaluation_{name}")
    def upstream_evaluation() -> EvaluationReport:
        return evaluation

    @dg.asset(name="training_set")
    def upstream_training() -> TrainingSet:
        return training

    return dg.materialize(
        [upstream_evaluation, upstream_training, report], raise_on_error=False,
        resources={"mlflow_registry": MlflowRegistry(tracking_uri=settings.mlflow_tracking_uri),
                   "policy": PolicyResource(path=settings.policy_path),
                   "io_manager": dg.mem_io_manager})


def test_a_report_never_shows_other_rows_than_the_evaluation_judged(settings):
    evaluation = EvaluationReport(family="sklearn", model_name="m", version="3",
                                  training_batches=["batch-00000", "batch-00001"])
    result = _report(settings, "sklearn", evaluation,
                     _training(["batch-00000", "batch-00001", "batch-00002"]))
    (failure,) = [e for e in result.all_events if e.is_step_failure]
    assert failure.step_key == "quality_report_sklearn"
    message = failure.step_failure_data.error.message
    assert "sklearn v3" in message and "batch-00002" in message


def test_a_candidate_that_was_not_evaluated_gets_no_report_and_no_failure(settings):
    evaluation = EvaluationReport(family="torch", model_name="m", version=None,
                                  error="training failed: CUDA out of memory")
    result = _report(settings, "torch", evaluation, _training([]))
    assert result.success
    (event,) = [e for e in result.get_asset_materialization_events()
                if e.asset_key == dg.AssetKey("quality_report_torch")]
    metadata = event.materialization.metadata
    summary = metadata["summary"].value
    assert summary.startswith("no report: the torch candidate was not evaluated")
    assert "CUDA out of memory" in summary and "evidently_report" not in metadata
    assert "placement_target" in metadata, "every step says where it ran"


@pytest.mark.parametrize(("uri", "expected"), [
    ("runs:/abc123/evaluation/1a2b3c4d/evaluation_report.json", "evaluation/1a2b3c4d"),
    (None, "evaluation/fallback"),
    ("s3://bucket/somewhere/else.json", "evaluation/fallback"),
])
def test_the_html_goes_beside_the_judged_json(uri, expected):
    report = EvaluationReport(family="f", model_name="m", version="1", report_uri=uri)
    assert report_folder(report, "evaluation/fallback") == expected
