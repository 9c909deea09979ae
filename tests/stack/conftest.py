"""One production stack per test session: `scripts/stack.sh up` on free loopback ports in a new
state folder, `down` at the end (a test may have run it already: down is safe twice)."""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.policies import write_policy
from tests.stack.stack import Stack, stack_sh

# Left out of the script's environment: a developer's own deployment settings must not leak in.
FOREIGN = ("UNIFIED_AI_", "DAGSTER_", "MLFLOW_", "AWS_")


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


@pytest.fixture(scope="session")
def stack_env() -> Iterator[dict[str, str]]:
    """The environment `scripts/stack.sh` runs with, its state folder in /tmp: under root the
    postgres user must reach the data folder, and pytest's own temp root is mode 700."""
    folder = Path(tempfile.mkdtemp(prefix="uai-stack-"))
    folder.chmod(0o711)
    # The shipped rules, but the first deployment waits for a person: the approval comes
    # from the CLI, signed with the stack's decider key.
    policy = write_policy(folder, {"approval": {"require_human_when": {"first_deployment": True}}},
                          name="base-policy.yaml")
    web, grpc, mlflow, s3, pg = free_ports(5)
    env = {k: v for k, v in os.environ.items() if not k.startswith(FOREIGN)}
    env |= {"UNIFIED_AI_STACK_DIR": str(folder / "stack"), "UNIFIED_AI_POLICY": str(policy),
            "PORT": str(web), "GRPC_PORT": str(grpc), "MLFLOW_PORT": str(mlflow),
            "S3_PORT": str(s3), "PG_PORT": str(pg), "STACK_TIMEOUT": "240",
            # The fault tests wait out outages in seconds, not minutes: a failed ingestion is
            # retried after 5 s (production: 60 s), and MLflow's client gives up on a server
            # that is down after 2 quick retries (MLflow's default: 7, minutes in all).
            "UNIFIED_AI_INGEST_RETRY_BACKOFF_S": "5", "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
            "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1"}
    yield env
    stack_sh("down", env)
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="session")
def stack(stack_env: dict[str, str]) -> Stack:
    up = stack_sh("up", stack_env)
    assert up.returncode == 0, f"stack.sh up failed:\n{up.stdout}\n{up.stderr}"
    stack = Stack(Path(stack_env["UNIFIED_AI_STACK_DIR"]), stack_env)
    # The scenario's sensors keep running: landing, drift, approvals, declarative automation,
    # failure incidents, pool limits. The others are turned off as an operator would from the
    # UI. Evidently's reports are for people (no gate reads them), and each costs a process
    # and tens of seconds of CPU. Serving, live monitoring, late labels and backlogs have
    # nothing to do here. Each tick of a sensor is a few new Postgres connections (the daemon
    # and the code server do not pool them); on 2 cores the idle ticks would take CPU from
    # the lifecycle under test.
    stack.stop_sensors("report_automation", "serving_follows_champion", "serving_scaling",
                       "live_performance_sensor", "labels_landing_sensor",
                       "support_backlog_sensor")
    return stack


# The lifecycle tests build on each other's outcome on one stack (a champion, its batches).
# Once one fails, the ones after it fail at once, naming it, instead of waiting minutes for
# outcomes that cannot come; tests marked `independent` (down) still run.
_FAILED: dict[str, str] = {}


def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> None:
    if call.excinfo is not None and call.when in ("setup", "call") and \
            "stack" in getattr(item, "fixturenames", ()):
        _FAILED.setdefault(str(item.path), item.name)


def pytest_runtest_setup(item: pytest.Item) -> None:
    earlier = _FAILED.get(str(item.path))
    if earlier and "stack" in getattr(item, "fixturenames", ()) and \
            item.get_closest_marker("independent") is None:
        pytest.fail(f"not run: {earlier} failed before it on this stack, and this test "
                    "builds on its outcome", pytrace=False)
