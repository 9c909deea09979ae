"""Ctrl-C on the README's run command is a stop, not a failure (issue 12: "every red thing in
the UI is a real failure"). Found by a new user: Ctrl-C during a training run left a red
FAILED run, and the next start filed and escalated a `run_failure` incident for it; the run's
work (a bootstrap run key, drift evidence a retrain had consumed) was not asked for again.

Here a run is held in progress deterministically: the gpu-pool's limit is set to 0 by hand
(the pool sensor keeps an operator's limit), so the bootstrap training run starts and its
torch step waits for a slot. Ctrl-C is what a terminal sends: SIGINT to the script's whole
process group."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import tempfile
from pathlib import Path

import dagster as dg

from tests.browser.conftest import ROOT, answers, free_port, wait_until

TRAIN_JOB = "train_evaluate_promote"


def _env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("UNIFIED_AI_", "DAGSTER_", "MLFLOW_"))}
    env.update(UNIFIED_AI_HOME=str(home), DAGSTER_HOME=str(home / "dagster_home"),
               PORT=str(free_port()), MLFLOW_PORT=str(free_port()),
               # the warm server's sockets, in a short folder of this test's own
               UNIFIED_AI_RAY_WARM_DIR=tempfile.mkdtemp(prefix="uaiw-", dir="/tmp") + "/s")
    return env


def _gpu_slots(env: dict[str, str], slots: int) -> None:
    subprocess.run([str(ROOT / ".venv" / "bin" / "dagster"), "instance", "concurrency", "set",
                    "gpu-pool", str(slots)], env=env, check=True, capture_output=True)


def _runs(home: Path, **filters) -> list[dg.DagsterRun]:
    with dg.DagsterInstance.from_config(str(home / "dagster_home")) as instance:
        return list(instance.get_runs(dg.RunsFilter(**filters)))


def _start(env: dict[str, str], log: Path) -> subprocess.Popen:
    with log.open("a") as out:
        return subprocess.Popen(["bash", "scripts/dev.sh"], cwd=ROOT, env=env, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)


def _kill_session(process: subprocess.Popen) -> None:
    """Whatever is left of a session (a failed test's dagster dev in its own group)."""
    for entry in Path("/proc").iterdir():
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            if entry.name.isdigit() and int(fields[3]) == process.pid:
                os.kill(int(entry.name), signal.SIGKILL)
        except (OSError, IndexError, ValueError):
            pass
    process.wait()


def test_ctrl_c_cancels_the_runs_in_progress_and_the_next_start_resumes_them(tmp_path: Path):
    home = tmp_path / "home"
    (home / "dagster_home").mkdir(parents=True)
    (home / "dagster_home" / "dagster.yaml").write_text(
        (ROOT / "deploy" / "local" / "dagster.yaml").read_text())
    env = _env(home)
    log = tmp_path / "dev.log"
    _gpu_slots(env, 0)
    process = _start(env, log)
    try:
        def training_waits() -> list[dg.DagsterRun]:
            assert process.poll() is None, log.read_text()[-3000:]
            return _runs(home, job_name=TRAIN_JOB, statuses=[dg.DagsterRunStatus.STARTED])

        (training,) = wait_until(training_waits, 300, "the bootstrap training run to start")
        os.killpg(process.pid, signal.SIGINT)  # Ctrl-C in the terminal
        assert process.wait(timeout=180) == 130, log.read_text()[-3000:]
    finally:
        _kill_session(process)

    stopped = _runs(home, run_ids=[training.run_id])[0]
    # A stop, shown as one: canceled (grey), tagged with why; nothing to file an incident on.
    assert stopped.status == dg.DagsterRunStatus.CANCELED, (stopped.status, log.read_text()[-3000:])
    assert "Ctrl-C" in stopped.tags["unified-ai/stopped"], stopped.tags
    assert not _runs(home, statuses=[dg.DagsterRunStatus.FAILURE])
    assert "stopped 1 run(s) in progress" in log.read_text()

    # The next start resumes it (a re-execution from where it stopped, in the same run group
    # as Dagster's own retries), and it ends with the first champion.
    _gpu_slots(env, 1)
    process = _start(env, log)
    try:
        def resumed() -> dg.DagsterRun | None:
            assert process.poll() is None, log.read_text()[-3000:]
            runs = _runs(home, tags={"dagster/parent_run_id": training.run_id})
            return runs[0] if runs and runs[0].is_finished else None

        run = wait_until(resumed, 300, "the stopped run's resumption to finish")
        assert run.status == dg.DagsterRunStatus.SUCCESS, log.read_text()[-3000:]
        assert run.tags["unified-ai/trigger"] == "resume"
        assert training.run_id[:8] in run.tags["unified-ai/reason"]
        assert run.tags["unified-ai/stopped"] == ""  # its own stop tag is not its parent's
        assert run.tags["dagster/is_resume_retry"] == "true"  # the finished steps are kept
        # Resumed once, not on every start or by every helper that looks.
        assert len(_runs(home, tags={"dagster/parent_run_id": training.run_id})) == 1
        assert answers(f"http://127.0.0.1:{env['PORT']}/server_info")
        os.killpg(process.pid, signal.SIGINT)
        assert process.wait(timeout=180) == 130
    finally:
        _kill_session(process)
    incidents = subprocess.run(
        [str(ROOT / ".venv" / "bin" / "unified-ai"), "incidents", "--kind", "run_failure"],
        env=env, cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert "no incidents recorded" in incidents, incidents
    assert not _runs(home, statuses=[dg.DagsterRunStatus.FAILURE])
    history = json.dumps([r.tags for r in _runs(home, job_name=TRAIN_JOB)])
    assert "bootstrap" in history
