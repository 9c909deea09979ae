"""The Dagster UI in a real browser, on a state a user reaches after two retrains: every
group in the lineage, a rollback launched from the launchpad that ends green with the
champion moved, and a held retrain that reads as a successful run with its reason."""

from __future__ import annotations

import json
import shutil

import dagster as dg
import pytest

from resources.mlflow_registry import MlflowRegistry
from tests.browser.conftest import start_dagster_dev, state_env, wait_until
from tests.policies import write_policy
from unified_assets.definitions import build_definitions
from unified_assets.lifecycle import ingest_landed, train_evaluate_promote
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
    """Two lifecycle runs on the instance the UI will read: champions A then B."""
    home = tmp_path_factory.mktemp("ui") / "home"
    home.mkdir()
    shutil.copy(mlflow_db_template, home / "mlflow.db")
    policy = write_policy(home.parent, POLICY)
    env = state_env(home, policy)
    settings = Settings("local", home, dataset_spec=None, policy_path=str(policy))
    write_batches(settings.landing_dir, batches=3, rows=2000)
    defs = build_definitions(settings)
    champions = []
    with dg.DagsterInstance.from_config(env["DAGSTER_HOME"]) as instance:
        ingest_landed(defs, instance)
        for _ in range(2):
            run = train_evaluate_promote(defs, instance)
            assert run.success, [e.message for e in run.all_events if e.is_failure]
            champions.append(champion(settings))
    assert champions[0] and champions[1] and champions[0] != champions[1], champions
    return settings, env, defs, champions


@pytest.fixture(scope="module")
def ui(state, tmp_path_factory):
    settings, env, _, _ = state
    yield from start_dagster_dev(env, tmp_path_factory.mktemp("logs") / "dagster-dev.log")


def _open(page, url: str) -> None:
    page.goto(url)


def test_the_lineage_shows_every_group(ui, page):
    _open(page, f"{ui.url}/asset-groups")
    for group in ("data", "training", "evaluation", "monitoring", "deployment"):
        page.get_by_text(group, exact=True).first.wait_for()
    page.get_by_text("Global asset lineage").wait_for()


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
    config = {"ops": {"production_model": {"config": {
        "action": "rollback", "by": "ops", "rollback_to": "",
        "reason": "browser test: roll back to the previous champion"}}}}
    run_id = _launch(page, ui, "rollback_production", config)
    status = wait_until(lambda: _run_status(env, run_id), 300, f"rollback run {run_id} to finish")
    assert status == "SUCCESS", ui.tail()
    assert champion(settings) == first
    page.reload()
    page.get_by_text("Success").first.wait_for()
