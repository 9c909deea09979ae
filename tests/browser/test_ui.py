"""The Dagster UI in a real browser, started by the README's run command on a state a user
reaches after two retrains: every group in the lineage, an evaluation's report one click
away (the link answers 200 with the report), a rollback launched from the launchpad that
ends green with the champion moved, a held retrain that reads as a successful run with its
reason, and the `approval` asset listing the version that awaits a person."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest

from resources.mlflow_registry import MlflowRegistry
from tests.browser.conftest import ROOT, start_run_command, state_env, stop_sensors, wait_until
from tests.policies import write_policy
from unified_assets.definitions import build_definitions
from unified_assets.lifecycle import ingest_landed, train_evaluate_promote, write_quality_reports
from unified_assets.ml.generator import write_batches
from unified_assets.settings import Settings

MODEL = "payments-risk"
# Retrains promote without a person, and an equal retrain counts as not worse, so the second
# run makes a second champion to roll back from.
POLICY = {"promotion": {"improvement": {"min_absolute": 0.0}},
          "approval": {"require_human_when": {"first_deployment": False, "gain_below": None,
                                              "any_segment_worse": False,
                                              "family_changes": False}}}
WEAK = {"ops": {"model_sklearn": {"config": {"max_iter": 1, "max_leaf_nodes": 2}},
                "model_torch": {"config": {"epochs": 1, "hidden_units": 2}}}}


def champion(settings: Settings) -> str | None:
    client = MlflowRegistry(tracking_uri=settings.mlflow_tracking_uri).client()
    try:
        return str(client.get_model_version_by_alias(MODEL, "champion").version)
    except Exception:  # noqa: BLE001 - no alias yet
        return None


@pytest.fixture(scope="module")
def state(tmp_path_factory, mlflow_db_template):
    saved = os.environ.get("UNIFIED_AI_MLFLOW_UI_URL")
    yield _prepare(tmp_path_factory, mlflow_db_template)
    if saved is None:
        os.environ.pop("UNIFIED_AI_MLFLOW_UI_URL", None)
    else:
        os.environ["UNIFIED_AI_MLFLOW_UI_URL"] = saved


def _prepare(tmp_path_factory, mlflow_db_template):
    """Two lifecycle runs on the instance the UI will read: champions A then B."""
    home = tmp_path_factory.mktemp("ui") / "home"
    home.mkdir()
    shutil.copy(mlflow_db_template, home / "mlflow.db")
    policy = write_policy(home.parent, POLICY)
    env = state_env(home, policy)
    settings = Settings("local", home, dataset_spec=None, policy_path=str(policy),
                        mlflow_ui_url=env["UNIFIED_AI_MLFLOW_UI_URL"])
    write_batches(settings.landing_dir, batches=3, rows=2000)
    # As scripts/dev.sh exports it for the code location: where report links point.
    os.environ["UNIFIED_AI_MLFLOW_UI_URL"] = env["UNIFIED_AI_MLFLOW_UI_URL"]
    defs = build_definitions(settings)
    champions = []
    with dg.DagsterInstance.from_config(env["DAGSTER_HOME"]) as instance:
        ingest_landed(defs, instance)
        for _ in range(2):
            run = train_evaluate_promote(defs, instance)
            assert run.success, [e.message for e in run.all_events if e.is_failure]
            champions.append(champion(settings))
        # What the report automation builds after an evaluation (no daemon runs here yet).
        assert write_quality_reports(defs, instance).success
    assert champions[0] and champions[1] and champions[0] != champions[1], champions
    return settings, env, defs, champions


@pytest.fixture(scope="module")
def ui(state, tmp_path_factory):
    settings, env, _, _ = state
    for ui in start_run_command(env, tmp_path_factory.mktemp("logs") / "dev.log"):
        assert "lifecycle_automation" in stop_sensors(ui)
        yield ui


def _open(page, url: str) -> None:
    page.goto(url)


def test_the_lineage_shows_every_group(ui, page):
    _open(page, f"{ui.url}/asset-groups")
    for group in ("data", "training", "evaluation", "monitoring", "deployment"):
        page.get_by_text(group, exact=True).first.wait_for()
    page.get_by_text("Global asset lineage").wait_for()


def test_an_evaluation_links_its_reports_and_the_links_open_them(ui, page):
    mlflow = ui.env["UNIFIED_AI_MLFLOW_UI_URL"]
    # The evaluation links its judged report (JSON), served by the MLflow UI...
    _open(page, f"{ui.url}/assets/evaluation_sklearn")
    raw = page.locator(f"a[href^='{mlflow}/get-artifact'][href*='evaluation_report.json']").first
    href = raw.get_attribute("href")
    response = wait_until(lambda: _get(page, href), 120, f"the MLflow UI to serve {href}")
    judged = response.json()
    assert judged["family"] == "sklearn" and "quality_floors" in judged["gates"]
    # ...and its quality report asset the Evidently HTML: the file answers 200...
    _open(page, f"{ui.url}/assets/quality_report_sklearn")
    raw = page.locator(f"a[href^='{mlflow}/get-artifact'][href*='evidently_report.html']").first
    href = raw.get_attribute("href")
    response = wait_until(lambda: _get(page, href), 120, f"the MLflow UI to serve {href}")
    html = response.text()
    assert "<html" in html.lower() and "root_metric_" in html and len(html) > 10_000
    # ...and the main link, one click from the asset page, shows it inside MLflow's run page.
    link = page.locator(f"a[href^='{mlflow}/#/experiments'][href$='evidently_report.html']").first
    with page.context.expect_page() as opened:  # Dagster opens metadata links in a new tab
        link.click()
    report = opened.value
    report.wait_for_url(f"{mlflow}/**")
    frame = report.frame_locator("iframe.mlflow-html-iframe")
    frame.locator("body").first.wait_for()
    assert "root_metric_" in frame.locator("html").inner_html()


def _get(page, url: str):
    try:
        response = page.request.get(url)
    except Exception:  # noqa: BLE001 - the MLflow UI is still starting
        return None
    return response if response.status == 200 else None


def _launch(page, ui, job: str, config: dict) -> str:
    """Fill the job's launchpad with `config` and launch; the run id the UI opens."""
    _open(page, f"{ui.url}/locations/unified_ai/jobs/{job}/playground")
    page.locator(".CodeMirror").first.wait_for()
    page.evaluate("(text) => document.querySelector('.CodeMirror').CodeMirror.setValue(text)",
                  json.dumps(config))
    page.get_by_role("button", name="Launch Run").click()
    page.wait_for_url("**/runs/**")
    return page.url.rstrip("/").split("/runs/")[1].split("?")[0]


def _run_status(env: dict, run_id: str) -> str | None:
    with dg.DagsterInstance.from_config(env["DAGSTER_HOME"]) as instance:
        run = instance.get_run_by_id(run_id)
        return run.status.value if run and run.is_finished else None


def test_a_rollback_launched_from_the_launchpad_ends_green_with_the_champion_moved(
        state, ui, page):
    settings, env, _, (first, second) = state
    assert champion(settings) == second
    # The run command's warm server (unified_assets/local_warm.py) is up: the run's process
    # is forked from it, and the step says so.
    warm = Path(env["UNIFIED_AI_RAY_WARM_DIR"])
    wait_until(lambda: any(warm.glob("*.sock")), 240, "the warm server to listen")
    config = {"ops": {"production_model": {"config": {
        "action": "rollback", "by": "ops", "rollback_to": "",
        "reason": "browser test: roll back to the previous champion"}}}}
    run_id = _launch(page, ui, "rollback_production", config)
    status = wait_until(lambda: _run_status(env, run_id), 300, f"rollback run {run_id} to finish")
    assert status == "SUCCESS", ui.tail()
    assert champion(settings) == first
    with dg.DagsterInstance.from_config(env["DAGSTER_HOME"]) as instance:
        event = instance.get_latest_materialization_event(dg.AssetKey("production_model"))
    assert event.run_id == run_id
    process = event.asset_materialization.metadata["placement_process"].value
    assert process.startswith("forked from warm server"), process
    page.reload()
    page.get_by_text("Success").first.wait_for()


def test_a_cli_rollback_through_the_webserver_is_a_run_of_the_ui(state, ui, page):
    """`unified-ai rollback` with UNIFIED_AI_DAGSTER_URL submits through the webserver's
    GraphQL API: the run is the webserver's (launched, shown in the UI), not the CLI's, and
    a refusal (the version was rolled back from, so the ledger will not make it champion
    again) comes back as the step's one line."""
    settings, env, _, (first, second) = state
    assert champion(settings) == first, "after the launchpad's rollback"
    done = subprocess.run(
        [sys.executable, "-m", "unified_assets.cli", "rollback", "--to", second, "--by", "ops",
         "--reason", "browser test: forward again from the CLI"],
        env={**env, "UNIFIED_AI_DAGSTER_URL": ui.url}, cwd=ROOT, capture_output=True,
        text=True, timeout=600)
    assert done.returncode == 1 and done.stdout == "", (done.stdout, done.stderr, ui.tail())
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith("rollback refused (run ") and f"v{second} was rolled back" in line
    run_id = re.search(r"\(run ([0-9a-f-]{36})", line).group(1)
    assert champion(settings) == first
    with dg.DagsterInstance.from_config(env["DAGSTER_HOME"]) as instance:
        run = instance.get_run_by_id(run_id)
    assert run.job_name == "rollback_production" and run.tags["unified-ai/source"] == "cli"
    assert run.status == dg.DagsterRunStatus.FAILURE
    _open(page, f"{ui.url}/runs/{run_id}")
    page.get_by_text("Failure").first.wait_for()


def test_a_held_retrain_is_a_successful_run_showing_why(state, ui, page):
    """Candidates that cannot beat the champion: a green run, the reason on the page."""
    settings, env, defs, _ = state
    with dg.DagsterInstance.from_config(env["DAGSTER_HOME"]) as instance:
        run = train_evaluate_promote(defs, instance, WEAK)
    assert run.success, [e.message for e in run.all_events if e.is_failure]
    _open(page, f"{ui.url}/runs/{run.run_id}")
    page.get_by_text("Success").first.wait_for()
    page.get_by_text("no candidate qualified").first.wait_for()


def test_the_approval_asset_lists_the_version_awaiting_a_person(state, ui, page, tmp_path):
    settings, env, _, _ = state
    human = write_policy(tmp_path, {**POLICY, "approval": {"require_human_when": {
        "first_deployment": False, "gain_below": 0.5, "any_segment_worse": False,
        "family_changes": False}}})
    strict = dataclasses.replace(settings, policy_path=str(human))
    with dg.DagsterInstance.from_config(env["DAGSTER_HOME"]) as instance:
        run = train_evaluate_promote(build_definitions(strict), instance)
    approval = run.output_for_node("approval")
    assert approval.approval_state == "pending", approval
    _open(page, f"{ui.url}/assets/approval")
    page.get_by_text("awaiting_decision").first.wait_for()
    page.get_by_text(f"v{approval.version}").first.wait_for()
