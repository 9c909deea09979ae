"""The README's run command, `scripts/dev.sh`, around its two UIs: the MLflow UI starts once
the Dagster UI answers (found by bench/first_champion.py: started together on two cores, the
MLflow server's start delayed the Dagster UI by 2-5 s), it runs at a lower CPU priority than
Dagster (sampled during the first champion: its start took 7 s of CPU while the first runs
started), and Ctrl-C on `dagster dev` still stops both, and the warm server its runs fork
from."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import tempfile
from pathlib import Path

from tests.browser.conftest import ROOT, answers, free_port, wait_until


def _session(sid: int) -> dict[int, str]:
    """The processes of a session, by pid, with their command lines (from /proc)."""
    found = {}
    for entry in Path("/proc").iterdir():
        with contextlib.suppress(OSError, IndexError):
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            if entry.name.isdigit() and int(fields[3]) == sid:
                found[int(entry.name)] = (entry / "cmdline").read_bytes().replace(
                    b"\0", b" ").decode(errors="replace")
    return found


def test_the_mlflow_ui_starts_after_the_dagster_ui_and_stops_with_it(tmp_path: Path):
    # The templated store (scripts/setup.sh makes it): dev.sh then starts Dagster first. A new
    # store without it starts the MLflow server first, to create its tables.
    assert (ROOT / ".venv" / "mlflow-store-template.db").is_file(), "scripts/setup.sh made none"
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("UNIFIED_AI_", "DAGSTER_", "MLFLOW_"))}
    warm = Path(tempfile.mkdtemp(prefix="uaiw-", dir="/tmp")) / "s"  # short: a socket path
    env.update(UNIFIED_AI_HOME=str(home), PORT=str(free_port()), MLFLOW_PORT=str(free_port()),
               UNIFIED_AI_RAY_WARM_DIR=str(warm))
    dagster_ui = f"http://127.0.0.1:{env['PORT']}/server_info"
    mlflow_ui = f"http://127.0.0.1:{env['MLFLOW_PORT']}/health"
    log = (tmp_path / "dev.log").open("w")
    process = subprocess.Popen(["bash", "scripts/dev.sh"], cwd=ROOT, env=env, stdout=log,
                               stderr=subprocess.STDOUT, start_new_session=True)
    try:
        # Which answered first, polled side by side (the order, not how long each took).
        order: list[str] = []

        def both_answer() -> bool:
            for name, url in (("mlflow", mlflow_ui), ("dagster", dagster_ui)):
                if name not in order and answers(url):
                    order.append(name)
            assert process.poll() is None, (tmp_path / "dev.log").read_text()[-3000:]
            return len(order) == 2

        wait_until(both_answer, 240, "both UIs to answer", every=0.2)
        assert order == ["dagster", "mlflow"], order
        # Every MLflow UI process yields the CPU to Dagster's (its webserver, daemon, runs).
        mlflow = {pid: cmd for pid, cmd in _session(process.pid).items()
                  if any(part in cmd for part in ("bin/mlflow server", "mlflow.server", "uvicorn"))}
        assert mlflow, _session(process.pid)
        niceness = {cmd: os.getpriority(os.PRIO_PROCESS, pid) for pid, cmd in mlflow.items()}
        assert all(value >= 10 for value in niceness.values()), niceness
        assert os.getpriority(os.PRIO_PROCESS, process.pid) == 0  # dagster dev and its processes
        # It sends no usage data (tests/resources/test_mlflow_telemetry.py for the code location).
        for pid in mlflow:
            assert b"MLFLOW_DISABLE_TELEMETRY=true" in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        # The code location started the warm server runs fork from (local_warm.py); it is
        # dev.sh's: it serves until dev.sh is gone.
        wait_until(lambda: any(warm.glob("*.sock")), 120, "the warm server to listen")
        (sock,) = warm.glob("*.sock")
        # Ctrl-C reaches the script, which stops `dagster dev` (test_dev_stop.py: the runs
        # in progress first); the MLflow UI follows.
        os.kill(process.pid, signal.SIGINT)
        process.wait(timeout=120)
        wait_until(lambda: not answers(mlflow_ui), 60, "the MLflow UI to stop")
        wait_until(lambda: not sock.exists(), 60, "the warm server to stop")
        assert f"the process that owns it ({process.pid}) exited" in \
            sock.with_suffix(".log").read_text()
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        log.close()
