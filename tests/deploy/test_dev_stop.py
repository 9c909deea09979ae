"""Ctrl-C on the README's run command is a stop, not a failure (issue 12: "every red thing in
the UI is a real failure"). Found by a new user: Ctrl-C during a training run left a red
FAILED run, and the next start filed and escalated a `run_failure` incident for it; the run's
work (a bootstrap run key, drift evidence a retrain had consumed) was not asked for again.

Here a run is held in progress deterministically: after the first champion, the gpu-pool's
limit is set to 0 by hand (the pool sensor keeps an operator's limit) and drifted batches land,
so the drift retrain starts, trains and evaluates its scikit-learn candidate, and its torch step
waits for a slot. Ctrl-C is what a terminal sends: SIGINT to the script's whole
process group."""

from __future__ import annotations

import contextlib
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


def _materialized(home: Path, run_id: str, asset: str) -> bool:
    with dg.DagsterInstance.from_config(str(home / "dagster_home")) as instance:
        return any(record.run_id == run_id for record in instance.fetch_materializations(
            dg.AssetKey(asset), limit=10).records)


def _created(home: Path, run_id: str) -> float:
    with dg.DagsterInstance.from_config(str(home / "dagster_home")) as instance:
        (record,) = instance.get_run_records(dg.RunsFilter(run_ids=[run_id]))
        return record.create_timestamp.timestamp()


def _start(env: dict[str, str], log: Path) -> subprocess.Popen:
    with log.open("a") as out:
        return subprocess.Popen(["bash", "scripts/dev.sh"], cwd=ROOT, env=env, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)


def _kill_session(process: subprocess.Popen) -> None:
    """Whatever is left of a session (a failed test's dagster dev in its own group)."""
    for entry in Path("/proc").iterdir():
        # A process may end between listing and reading: it is gone, as wanted.
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            if entry.name.isdigit() and int(fields[3]) == process.pid:
                os.kill(int(entry.name), signal.SIGKILL)
    process.wait()


def test_ctrl_c_cancels_the_runs_in_progress_and_the_next_start_resumes_them(tmp_path: Path):
    home = tmp_path / "home"
    (home / "dagster_home").mkdir(parents=True)
    (home / "dagster_home" / "dagster.yaml").write_text(
        (ROOT / "deploy" / "local" / "dagster.yaml").read_text())
    env = _env(home)
    log = tmp_path / "dev.log"
    process = _start(env, log)
    try:
        def champion() -> bool:
            assert process.poll() is None, log.read_text()[-3000:]
            return any(_runs(home, job_name=TRAIN_JOB, statuses=[dg.DagsterRunStatus.SUCCESS]))

        wait_until(champion, 300, "the first training run to end")
        # A drift retrain, stopped part way: its scikit-learn candidate trained and evaluated,
        # its torch one waiting for a slot (the README's drifted batches).
        _gpu_slots(env, 0)
        subprocess.run([str(ROOT / ".venv" / "bin" / "unified-ai"), "generate", "--out",
                        str(home / "landing"), "--batches", "2", "--first-batch", "6",
                        "--drift-from", "6", "--covariate-shift", "3.0", "--label-shift", "0.5"],
                       env=env, check=True, capture_output=True)

        def retrain_waits() -> list[dg.DagsterRun]:
            assert process.poll() is None, log.read_text()[-3000:]
            return [run for run in _runs(home, job_name=TRAIN_JOB,
                                         statuses=[dg.DagsterRunStatus.STARTED])
                    if _materialized(home, run.run_id, "evaluation_sklearn")]

        (training,) = wait_until(retrain_waits, 300, "a retrain stopped at its torch step")
        assert training.tags["unified-ai/trigger"] == "drift"
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
    # Its resumption is queued already, held until the next start: in progress from the stop
    # on, so nothing at the next start acts on the stopped run's partial outputs first.
    (held,) = _runs(home, tags={"dagster/parent_run_id": training.run_id})
    assert held.status == dg.DagsterRunStatus.QUEUED
    assert held.tags["unified-ai/hold"] == "until-resumed"
    stop_time = _created(home, held.run_id)

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
        assert run.run_id == held.run_id
        assert "unified-ai/stopped" not in run.tags  # its parent's stop is not its own
        assert run.tags["unified-ai/hold"].startswith("released at ")
        assert run.tags["dagster/is_resume_retry"] == "true"  # the finished steps are kept
        # Found by a new user: at the next start, automation re-ran the promotion steps on the
        # stopped run's partial outputs (against the old model) before a resumption made at
        # start was queued; whether it did depended on which came first. Held and queued from
        # the stop on, the resumption is in progress before automation's first tick.
        automation = [r for r in _runs(home, job_name="__ASSET_JOB")
                      if _created(home, r.run_id) > stop_time
                      and {"challenger", "approval", "production_model"}
                      & {k.to_user_string() for k in r.asset_selection or ()}]
        assert not automation, [(r.run_id, r.asset_selection) for r in automation]
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
    assert "drift" in history


def test_started_in_the_background_by_a_script_it_still_stops_on_sigterm(tmp_path: Path):
    # Found by a new user: `bash scripts/dev.sh &` from a script, then `kill`, hung for good:
    # bash makes a background job ignore SIGINT, every child inherited that, and SIGINT is how
    # the stop (and `dagster dev` itself) stops the processes.
    home = tmp_path / "home"
    home.mkdir()
    env = _env(home)
    log = tmp_path / "dev.log"
    with log.open("w") as out:
        script = subprocess.Popen(
            ["bash", "-c", f"bash scripts/dev.sh & echo $! > {tmp_path}/dev.pid; wait"],
            cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_until(lambda: script.poll() is None and answers(
            f"http://127.0.0.1:{env['PORT']}/server_info"), 240, "the Dagster UI to answer")
        dev = int((tmp_path / "dev.pid").read_text())
        ignored = int(next(line for line in Path(f"/proc/{dev}/status").read_text().splitlines()
                           if line.startswith("SigIgn:")).split()[1], 16)
        assert ignored & (1 << (signal.SIGINT - 1)), "the script's background job ignores SIGINT"
        os.kill(dev, signal.SIGTERM)
        assert script.wait(timeout=120) == 0  # `wait` returns once dev.sh has ended
        wait_until(lambda: not answers(f"http://127.0.0.1:{env['PORT']}/server_info"), 60,
                   "the Dagster UI to stop")
    finally:
        _kill_session(script)
