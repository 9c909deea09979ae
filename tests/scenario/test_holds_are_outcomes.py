"""Holds are outcomes: when no candidate qualifies, the retrain run is green, says why, and
skips approval and promotion through Dagster's conditional outputs. Real MLflow (sqlite)."""

import dagster as dg
import pytest

from resources.mlflow_registry import MlflowRegistry
from tests.policies import with_policy
from tests.states import Recipe
from unified_assets.definitions import build_definitions
from unified_assets.lifecycle import ingest_landed, train_evaluate_promote
from unified_assets.ml.generator import write_batches

CHALLENGER = dg.AssetKey("challenger")
DOWNSTREAM = ("approval", "production_model")
# Full lifecycles sharing built states: on one xdist worker, which builds each once.
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("holds")]


def _champion(settings) -> str | None:
    client = MlflowRegistry(tracking_uri=settings.mlflow_tracking_uri).client()
    try:
        return str(client.get_model_version_by_alias("payments-risk", "champion").version)
    except Exception:  # noqa: BLE001 - no alias yet
        return None


def _unreachable_segment_floor(settings, instance, folder, _base):
    """Landed, ingested batches under a segment floor no model reaches, and the automation
    tick before any retrain (the value)."""
    write_batches(settings.landing_dir, batches=3, rows=2000)
    settings = with_policy(settings, folder, {"promotion": {"segments": {
        "floor": 0.999, "max_disparity": None, "min_rows": 150}}})
    defs = build_definitions(settings)
    ingest_landed(defs, instance)
    return settings, dg.evaluate_automation_conditions(defs=defs, instance=instance)


def _first_retrain(settings, instance, _folder, before):
    return settings, (train_evaluate_promote(build_definitions(settings), instance), before)


# Built once per session, restored per test.
FLOOR = Recipe("holds:unreachable-floor", _unreachable_segment_floor)
HELD = Recipe("holds:first-retrain-held", _first_retrain, base=FLOOR)


@pytest.fixture
def held_state(states):
    with states.use(HELD) as state:
        yield state


@pytest.fixture
def held(held_state):
    """Every candidate is held back on the first retrain."""
    settings, (result, before) = held_state.settings, held_state.value
    return settings, build_definitions(settings), result, before


def test_a_gate_hold_is_a_green_run_that_says_why_and_skips_promotion(held, held_state):
    settings, defs, result, before = held
    instance = held_state.instance
    assert result.success, [e.message for e in result.all_events if e.is_failure]
    skipped = {e.step_key for e in result.all_events if e.is_step_skipped}
    assert skipped == set(DOWNSTREAM)
    assert {e.step_key for e in result.all_events if e.is_step_failure} == set()
    # Nothing downstream of the evaluations is materialized; the champion is untouched.
    assert result.asset_materializations_for_node("challenger") == []
    for asset in ("challenger", *DOWNSTREAM):
        assert instance.fetch_materializations(dg.AssetKey(asset), limit=1).records == []
    assert _champion(settings) is None

    checks = {e.check_name: e for e in result.get_asset_check_evaluations()
              if e.asset_key == CHALLENGER}
    selected = checks["challenger_selected"]
    assert not selected.passed and selected.blocking
    assert selected.severity == dg.AssetCheckSeverity.WARN, "a hold is an outcome, not an error"
    reason = selected.metadata["reason"].value
    assert reason.startswith("no candidate qualified: ")
    assert "below the floor 0.999" in reason and "sklearn v" in reason and "torch v" in reason
    assert selected.metadata["held_back"].value == list(DOWNSTREAM)
    assert "| sklearn |" in selected.metadata["candidates"].value
    assert not checks["segment_fairness"].passed
    assert all(c.blocking and (c.passed or c.severity == dg.AssetCheckSeverity.WARN)
               for c in checks.values())

    # Later automation ticks neither re-run the hold nor put anything up for approval.
    later = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=before.cursor)
    for asset in ("challenger", *DOWNSTREAM):
        assert later.get_num_requested(dg.AssetKey(asset)) == 0, asset


def test_the_summary_reads_a_hold_as_a_hold_with_its_reason(held):
    from unified_assets.lifecycle import summarize

    _, _, result, _ = held
    summary = summarize(result)
    assert summary.steps_failed == {}
    assert summary.challenger is None
    assert summary.held.startswith("no candidate qualified: ")
    assert set(summary.steps_skipped) == set(DOWNSTREAM)
    text = "\n".join(summary.lines())
    assert "FAILED" not in text and "Error" not in text
    assert f"promotion held: {summary.held}" in text
    assert "models trained: 2" in text


def test_a_hold_launched_as_sensors_launch_it_is_not_rerun_by_automation(states):
    """A sensor's run of train_evaluate_promote records no asset selection, so Dagster cannot
    tell that the challenger already judged these evaluations; without care, automation
    would run the hold again and put approval and promotion in that run."""
    with states.use(FLOOR) as floor:
        _not_rerun_by_automation(floor.settings, floor.instance, floor.value)


def _not_rerun_by_automation(settings, instance, before):
    defs = build_definitions(settings)
    run = defs.resolve_job_def("train_evaluate_promote").execute_in_process(
        instance=instance, raise_on_error=False)
    assert run.success and not instance.get_run_by_id(run.run_id).asset_selection
    later = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=before.cursor)
    for asset in ("challenger", *DOWNSTREAM):
        assert later.get_num_requested(dg.AssetKey(asset)) == 0, asset
