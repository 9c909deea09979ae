"""The drift sensor's ticks with nothing to judge stay cheap. Found by sampling the first
champion's code server (py-spy): its first tick asked MLflow for the champion, and importing
MLflow there took 2.6-4 s while the daemon's other sensors (the landing sensor among them,
ticking one after the other in a random order) waited behind it. Such a tick answers without
MLflow and has it imported on a background thread, so the tick that needs the registry (a
first training once enough batches are in) does not pay for the import either."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# A fresh code server: the code location loaded, one tick of the drift sensor on an instance
# with `landed` batches and no batch_drift decision, then whether MLflow was imported.
TICK = """
import sys, threading
from pathlib import Path
import dagster as dg
from unified_assets.definitions import build_definitions
from unified_assets.partitions import BATCHES
from unified_assets.settings import Settings

home, landed, mode = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
defs = build_definitions(Settings(deployment="local", home=home, dataset_spec=None))
if mode == "unimportable":
    sys.modules["mlflow"] = None  # any `import mlflow` during the tick raises ImportError
with dg.instance_for_test() as instance:
    instance.add_dynamic_partitions(BATCHES.name, [f"batch-{i:04d}" for i in range(landed)])
    context = dg.build_sensor_context(instance=instance, definitions=defs, resources={
        k: defs.resources[k] for k in ("dataset", "mlflow_registry", "policy")})
    result = defs.resolve_sensor_def("drift_retrain_sensor")(context)
print(getattr(result, "skip_message", result))
for thread in threading.enumerate():
    if thread.name == "unified-ai-mlflow-imports":
        thread.join()
print(sorted(m for m in ("mlflow", "mlflow.store.tracking.sqlalchemy_store",
                         "mlflow.store.model_registry.sqlalchemy_store") if sys.modules.get(m)))
"""
STORES = ["mlflow", "mlflow.store.model_registry.sqlalchemy_store",
          "mlflow.store.tracking.sqlalchemy_store"]


def _tick(home: Path, landed: int, mode: str = "") -> tuple[str, list[str]]:
    home.mkdir(exist_ok=True)
    out = subprocess.run([sys.executable, "-c", TICK, str(home), str(landed), mode], cwd=ROOT,
                         capture_output=True, text=True, check=True)
    reason, imported = out.stdout.strip().splitlines()[-2:]
    return reason, eval(imported)  # noqa: S307 - our own subprocess's printed list


def test_a_tick_with_nothing_to_judge_answers_without_mlflow(tmp_path):
    # Fewer batches than a first training needs (the shipped policy: 3) and no drift decision:
    # whatever the registry says, nothing can be requested; MLflow cannot even be imported.
    reason, imported = _tick(tmp_path / "home", landed=2, mode="unimportable")
    assert "no new batch_drift decision" in reason and "2 of 3" in reason, reason
    assert imported == []


def test_a_tick_with_nothing_to_judge_has_mlflow_imported_in_the_background(tmp_path):
    reason, imported = _tick(tmp_path / "home", landed=0)
    assert "no new batch_drift decision" in reason and "0 of 3" in reason, reason
    assert imported == STORES


def test_enough_batches_for_a_first_training_ask_the_registry(tmp_path):
    # Whether a first training is due depends on the champion: the registry is asked.
    reason, imported = _tick(tmp_path / "home", landed=3)
    assert "no champion yet: 0 of 3 labelled batches ingested" in reason, reason
    assert imported == STORES


def test_the_sensors_that_carry_a_batch_to_its_model_are_looked_at_in_every_daemon_loop(
        settings):
    """Dagster's sensor daemon takes its ticks in loops at least 5 s apart, one sensor after
    another in a shuffled order. With a 5 s interval, a sensor whose tick came earlier in its
    loop than in the previous one was skipped for a whole loop: the first training was asked
    for 9.3 s after its batches were ingested (bench/first_champion.py), not within 5 s."""
    from dagster._daemon.sensor import MIN_INTERVAL_LOOP_TIME

    from unified_assets.definitions import build_definitions

    defs = build_definitions(settings)
    for name in ("landing_zone_sensor", "drift_retrain_sensor"):
        interval = defs.get_sensor_def(name).minimum_interval_seconds
        # Below half a loop: a tick at any point of the next loop is due.
        assert interval is not None and interval <= MIN_INTERVAL_LOOP_TIME / 2, name
