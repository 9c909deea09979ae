"""Reports one click away: a real evaluation and a real drift report log their reports to
MLflow, and the links in their metadata answer over HTTP from a real `mlflow server` process
on a free loopback port, reading the same sqlite store and artifact folder.

Found: the evaluation's Evidently link was a `file://` URL the browser refuses and the drift
report a bare path; neither exists on a viewer's machine when the code runs in a pod."""

from __future__ import annotations

import json
import urllib.parse

import dagster as dg
import pytest

from resources.mlflow_registry import MlflowRegistry
from tests.mlflow_server import free_port, http_get, mlflow_server
from unified_assets.assets.data import landed_batch
from unified_assets.assets.drift_report import drift_report
from unified_assets.assets.evaluation import build_evaluation_asset
from unified_assets.assets.models import build_model_asset
from unified_assets.assets.monitoring import batch_drift
from unified_assets.assets.quality_report import build_quality_report_asset
from unified_assets.assets.training import training_set
from unified_assets.candidates import SHIPPED
from unified_assets.definitions import build_definitions
from unified_assets.lifecycle import ingest_landed
from unified_assets.ml.generator import DriftSpec, write_batches


def _metadata(result: dg.ExecuteInProcessResult, asset: str) -> dict:
    (event,) = [e for e in result.get_asset_materialization_events()
                if e.asset_key == dg.AssetKey(asset)]
    return {k: v.value for k, v in event.materialization.metadata.items()}


def _page_artifact(base: str, page_url: str) -> tuple[str, str]:
    """(run id, artifact path) of an MLflow UI run-page link, which must sit on `base`."""
    assert page_url.startswith(f"{base}/#/experiments/")
    fragment = page_url.split("#", 1)[1]
    parts = fragment.strip("/").split("/")
    assert parts[2] == "runs" and parts[4] == "artifacts", page_url
    return parts[3], "/".join(parts[5:])


def _assert_page_shows(base: str, page_url: str, file_url: str) -> bytes:
    """The UI page answers, lists the artifact, and the file link serves its bytes."""
    run_id, path = _page_artifact(base, page_url)
    status, headers, body = http_get(page_url.split("#", 1)[0])
    assert status == 200 and headers["content-type"].startswith("text/html")
    listing_url = (f"{base}/ajax-api/2.0/mlflow/artifacts/list?"
                   + urllib.parse.urlencode({"run_id": run_id, "path": path.rsplit("/", 1)[0]}))
    listed = json.loads(http_get(listing_url)[2])
    assert path in {f["path"] for f in listed["files"]}
    query = urllib.parse.parse_qs(urllib.parse.urlsplit(file_url).query)
    assert file_url.startswith(f"{base}/get-artifact?")
    assert query == {"path": [path], "run_uuid": [run_id]}
    status, headers, body = http_get(file_url)
    assert status == 200, body[:300]
    return body


def test_evaluation_and_drift_report_links_open_from_a_real_mlflow_server(settings, instance):
    write_batches(settings.landing_dir, batches=3, rows=1500)
    defs = build_definitions(settings)
    ingest_landed(defs, instance)
    port = free_port()  # the UI URL is configuration: the server comes up there later
    registry = MlflowRegistry(tracking_uri=settings.mlflow_tracking_uri,
                              artifact_location=settings.mlflow_artifact_location,
                              ui_url=f"http://127.0.0.1:{port}/")
    resources = dict(defs.resources) | {"mlflow_registry": registry}
    model_sklearn = build_model_asset(SHIPPED["sklearn"])
    evaluation_sklearn = build_evaluation_asset(SHIPPED["sklearn"])
    quality_sklearn = build_quality_report_asset(SHIPPED["sklearn"])
    assets = [training_set, model_sklearn, evaluation_sklearn, quality_sklearn]
    trained = dg.materialize(
        assets, selection=assets[:3], instance=instance,
        resources=resources, raise_on_error=False,
        run_config={"ops": {"model_sklearn": {"config": {"max_iter": 20}}}},
    )
    assert trained.success
    evaluation = _metadata(trained, "evaluation_sklearn")
    assert "evidently_report" not in evaluation, "the HTML is the quality report's, built after"
    # The report automation's run: Evidently's HTML of the evaluated version.
    reported = dg.materialize(assets, selection=[quality_sklearn], instance=instance,
                              resources=resources, raise_on_error=False)
    assert reported.success
    quality = _metadata(reported, "quality_report_sklearn")
    report = trained.output_for_node("evaluation_sklearn")
    candidate = trained.output_for_node("model_sklearn")
    # The summary answers the usual questions without opening anything.
    assert f"sklearn v{candidate.version}" in evaluation["summary"]
    assert "ROC AUC" in evaluation["summary"] and "no champion yet" in evaluation["summary"]
    # Approvals and rollbacks cite the JSON logged to the candidate's MLflow run, by its URI.
    folder = f"evaluation/{trained.run_id[:8]}"
    assert report.report_uri == f"runs:/{candidate.run_id}/{folder}/evaluation_report.json"
    assert evaluation["report_uri"] == report.report_uri and report.links.report
    registry.set_alias(candidate.model_name, candidate.version)

    write_batches(settings.landing_dir, batches=1, rows=1500, first_batch=3,
                  drift=DriftSpec(start_batch=3, covariate_shift=3.0))
    ingest_landed(defs, instance)
    drifted = dg.materialize([landed_batch, batch_drift, drift_report],
                             selection=[batch_drift, drift_report], partition_key="batch-00003",
                             instance=instance, resources=resources, raise_on_error=False)
    assert drifted.success
    drift = _metadata(drifted, "drift_report")
    assert "columns drifted" in drift["summary"] and "amount" in drift["summary"]

    # The server comes up where the configuration said, on the store the code wrote to.
    with mlflow_server(settings.mlflow_tracking_uri, settings.mlflow_artifact_location,
                       port) as base:
        html = _assert_page_shows(base, quality["evidently_report"],
                                  quality["evidently_report_file"])
        assert b"<html" in html[:500] and b"Drift" in html and len(html) > 10_000
        stored = json.loads(_assert_page_shows(base, evaluation["report"], evaluation["report_file"]))
        assert stored["version"] == candidate.version and stored["passed_gates"] is not None
        run_id, path = _page_artifact(base, quality["evidently_report"])
        assert run_id == candidate.run_id, "evaluation reports belong to the candidate's run"
        # Beside the judged JSON it illustrates, in the evaluation's folder.
        assert path == f"{folder}/evidently_report.html"
        assert quality["model_version"] == candidate.version

        html = _assert_page_shows(base, drift["report"], drift["report_file"])
        assert b"<html" in html[:500] and b"DATA DRIFT" in html
        assert b'"column_name": "amount"' in html
        status, _, _ = http_get(drift["mlflow_run"].split("#", 1)[0])
        assert status == 200



@pytest.mark.parametrize(("ui_url", "environ", "tracking_uri", "expected"), [
    ("http://mlflow.example.org/", {}, "sqlite:///x.db", "http://mlflow.example.org"),
    (None, {"UNIFIED_AI_MLFLOW_UI_URL": "https://ml.example.org/"}, "http://mlflow.svc:5000",
     "https://ml.example.org"),
    (None, {}, "http://mlflow.mlflow.svc.cluster.local:5000/",
     "http://mlflow.mlflow.svc.cluster.local:5000"),
    (None, {}, "sqlite:///x.db", "http://127.0.0.1:5000"),
])
def test_the_ui_url_is_configured_else_the_tracking_server_else_the_local_ui(
        monkeypatch, ui_url, environ, tracking_uri, expected):
    monkeypatch.delenv("UNIFIED_AI_MLFLOW_UI_URL", raising=False)
    for key, value in environ.items():
        monkeypatch.setenv(key, value)
    registry = MlflowRegistry(tracking_uri=tracking_uri, ui_url=ui_url)
    assert registry.ui_base() == expected
    link = registry.artifact_link("abc", "3", "evaluation/x y/report.html")
    assert link.page == f"{expected}/#/experiments/3/runs/abc/artifacts/evaluation/x y/report.html"
    assert link.file == f"{expected}/get-artifact?path=evaluation%2Fx+y%2Freport.html&run_uuid=abc"
    assert link.run_page == f"{expected}/#/experiments/3/runs/abc"


def test_reports_that_cannot_reach_mlflow_say_why(settings):
    """MLflow unreachable or the run gone: the judged report stays the asset's value (the IO
    manager keeps it) and the metadata says why there is no link or URI instead of linking
    to nothing."""
    from unified_assets.assets.evaluation import _metadata, _publish
    from unified_assets.values import EvaluationReport

    registry = MlflowRegistry(tracking_uri=settings.mlflow_tracking_uri)
    report = EvaluationReport(family="sklearn", model_name="m", version="4",
                              overall={"roc_auc": 0.78114253001766}, passed_gates=True)
    _publish(dg.build_asset_context(), registry, "no-such-run", report)
    assert report.mlflow_error and report.links.report is None and report.report_uri is None
    metadata = {k: getattr(v, "value", v) for k, v in _metadata(report).items()}
    assert metadata["report"].startswith("not logged to MLflow: ")
    assert metadata["report_uri"] == metadata["report"]
    assert metadata["roc_auc"] == 0.7811
    assert metadata["summary"].startswith("**sklearn v4 (no champion yet)**: passed every")
