"""The drift sensor's ticks with nothing to judge stay cheap. Found by sampling the first
champion's code server (py-spy): its first tick asked MLflow for the champion, and importing
MLflow there took 2.6-4 s while the daemon's other sensors (the landing sensor among them,
ticking one after the other in a random order) waited behind it."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# A fresh code server: the code location loaded, one tick of the drift sensor on an instance
# with `landed` batches and no batch_drift decision, then whether MLflow was imported.
TICK = """
import sys
from pathlib import Path
import dagster as dg
from unified_assets.definitions import build_definitions
from unified_assets.partitions import BATCHES
from unified_assets.settings import Settings

defs = build_definitions(Settings(deployment="local", home=Path(sys.argv[1]), dataset_spec=None))
with dg.instance_for_test() as instance:
    instance.add_dynamic_partitions(BATCHES.name, [f"batch-{i:04d}" for i in range(int(sys.argv[2]))])
    context = dg.build_sensor_context(instance=instance, definitions=defs, resources={
        k: defs.resources[k] for k in ("dataset", "mlflow_registry", "policy")})
    result = defs.resolve_sensor_def("drift_retrain_sensor")(context)
print(getattr(result, "skip_message", result))
print("mlflow imported" if "mlflow" in sys.modules else "mlflow not imported")
"""


def _tick(home: Path, landed: int) -> list[str]:
    home.mkdir(exist_ok=True)
    out = subprocess.run([sys.executable, "-c", TICK, str(home), str(landed)], cwd=ROOT,
                         capture_output=True, text=True, check=True)
    return out.stdout.strip().splitlines()[-2:]


def test_a_tick_with_nothing_to_judge_never_imports_mlflow(tmp_path):
    # Fewer batches than a first training needs (the shipped policy: 3) and no drift decision:
    # whatever the registry says, nothing can be requested.
    reason, imported = _tick(tmp_path / "home", landed=2)
    assert imported == "mlflow not imported", reason
    assert "no new batch_drift decision" in reason and "2 of 3" in reason, reason


def test_enough_batches_for_a_first_training_ask_the_registry(tmp_path):
    # Whether a first training is due depends on the champion: the registry is asked.
    reason, imported = _tick(tmp_path / "home", landed=3)
    assert imported == "mlflow imported", reason
    assert "no champion yet: 0 of 3 labelled batches ingested" in reason, reason
