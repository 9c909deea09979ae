"""Shared by the benchmarks that time the README's run command (first_champion,
landing_throughput): a clean environment for one state folder, free loopback ports, and
whether a URL answers."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import urllib.request
from pathlib import Path

THREADS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def env_for(home: Path) -> dict[str, str]:
    """This process's environment without any project, Dagster or MLflow setting, threads
    pinned to 1, pointed at `home`."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("UNIFIED_AI_", "DAGSTER_", "MLFLOW_"))}
    env |= {name: "1" for name in THREADS}
    env |= {"UNIFIED_AI_HOME": str(home), "DAGSTER_HOME": str(home / "dagster_home")}
    return env


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def stop_group(process: subprocess.Popen) -> None:
    """Stop the run command's whole process group (dagster dev, its daemon, webserver and
    code server, the MLflow UI): SIGTERM, then SIGKILL after a minute."""
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
