"""The stack's files agree with the production ones: its instance is deploy/dagster.yaml but for
the run launcher, Dagster accepts it, and its
workspace names the code location the CLI submits runs to. No processes."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import yaml
from dagster._core.instance.config import dagster_instance_config

from unified_assets.services.runs import LOCATION_NAME

ROOT = Path(__file__).resolve().parents[2]
PRODUCTION = yaml.safe_load((ROOT / "deploy" / "dagster.yaml").read_text())
STACK = yaml.safe_load((ROOT / "deploy" / "stack" / "dagster.yaml").read_text())
SAME = ("storage", "scheduler", "run_coordinator", "run_monitoring", "compute_logs", "concurrency",
        "telemetry")


def test_stack_instance_is_the_kubernetes_instance_but_for_the_launcher():
    assert set(STACK) == set(PRODUCTION)
    for section in SAME:
        assert STACK[section] == PRODUCTION[section], section
    assert STACK["run_launcher"]["class"] == "DefaultRunLauncher"
    assert PRODUCTION["run_launcher"]["class"] == "K8sRunLauncher"


def test_dagster_accepts_the_stack_instance(tmp_path):
    shutil.copy(ROOT / "deploy" / "stack" / "dagster.yaml", tmp_path / "dagster.yaml")
    config, custom_class = dagster_instance_config(str(tmp_path))
    assert custom_class is None and config["run_monitoring"]["enabled"] is True


def test_workspace_loads_the_code_server_the_cli_submits_to():
    workspace = yaml.safe_load((ROOT / "deploy" / "stack" / "workspace.yaml").read_text())
    (entry,) = workspace["load_from"]
    server = entry["grpc_server"]
    assert server["host"] == "127.0.0.1"
    assert server["port"] == {"env": "UNIFIED_AI_STACK_GRPC_PORT"}
    assert server["location_name"] == LOCATION_NAME


def test_stack_script_parses_and_refuses_an_unknown_command():
    script = ROOT / "scripts" / "stack.sh"
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    usage = subprocess.run(["bash", str(script), "rebuild"], capture_output=True, text=True)
    assert usage.returncode == 2 and "usage: bash scripts/stack.sh up|down|status" in usage.stderr
    vague = subprocess.run(["bash", str(script), "restart", "everything"], capture_output=True,
                           text=True)
    assert vague.returncode == 1 and (
        "restart what? 'everything' is not a component; one of: postgres s3 mlflow" in vague.stderr)
