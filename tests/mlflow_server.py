"""A real `mlflow server` process on a free loopback port, started as scripts/dev.sh starts it
(one worker, no job runner) in its own process group and stopped with it. Shared by the
report-link tests; a browser test can start one beside `dagster dev` the same way."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

STARTUP_DEADLINE_S = 180  # a deadline for a loaded machine, not an assertion about speed


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def http_get(url: str) -> tuple[int, dict[str, str], bytes]:
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


@contextmanager
def mlflow_server(tracking_uri: str, artifact_root: str, port: int) -> Iterator[str]:
    """`mlflow server` as scripts/dev.sh starts it, in its own process group, stopped after."""
    mlflow = Path(sys.executable).with_name("mlflow")
    log = tempfile.NamedTemporaryFile(prefix="mlflow-server-", suffix=".log")  # noqa: SIM115
    process = subprocess.Popen(
        [str(mlflow), "server", "--backend-store-uri", tracking_uri,
         "--default-artifact-root", artifact_root, "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1"],
        env=os.environ | {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + STARTUP_DEADLINE_S
        while True:
            if process.poll() is not None:
                pytest.fail(f"mlflow server exited with {process.returncode}:\n{_tail(log.name)}")
            try:
                if http_get(f"{base}/health")[0] == 200:
                    break
            except OSError:
                pass  # not listening yet: poll again until the deadline
            if time.monotonic() > deadline:
                pytest.fail(f"mlflow server did not answer on {base} within {STARTUP_DEADLINE_S} s:"
                            f"\n{_tail(log.name)}")
            time.sleep(0.5)
        yield base
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        log.close()


def _tail(path: str, lines: int = 30) -> str:
    return "\n".join(Path(path).read_text(errors="replace").splitlines()[-lines:])
