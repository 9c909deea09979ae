"""The code location sends no usage data: Dagster's telemetry is off in every instance config,
and MLflow's is off in every process that loads the code location, unless the user set
MLFLOW_DISABLE_TELEMETRY. Found by bench/lifecycle_overhead.py: MLflow's telemetry thread
held up one step per run by about 0.6 s (approval: 0.59 s against 0.04 s with it off)."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CHECK = ("import resources.mlflow_registry, mlflow.environment_variables as e, os; "
         "print(os.environ['MLFLOW_DISABLE_TELEMETRY'], e.MLFLOW_DISABLE_TELEMETRY.get())")


def _run(**env: str) -> str:
    clean = {k: v for k, v in os.environ.items() if k != "MLFLOW_DISABLE_TELEMETRY"}
    return subprocess.run([sys.executable, "-c", CHECK], cwd=ROOT, env=clean | env,
                          capture_output=True, text=True, check=True).stdout.strip()


def test_mlflow_telemetry_is_off_where_the_code_location_is_loaded():
    assert _run() == "true True"


def test_a_users_own_setting_is_kept():
    assert _run(MLFLOW_DISABLE_TELEMETRY="false") == "false False"
