"""Time to the first champion under the README's run command, against the same computations
called directly in one plain script (bench/plain_lifecycle.py) on the same data.

    .venv/bin/python bench/first_champion.py [--batches 6] [--rows 4000] [--repeats 1]

Dagster side: `bash scripts/dev.sh` on a fresh state folder (venv already built; it seeds
the README's batches and starts `dagster dev`), clock from the start of the command to the
first `production_model` materialization in the instance (polled every 0.5 s from here).
Plain side: one fresh Python process on a fresh state folder with the same generated
batches: import, ingest, train both candidates, evaluate, select, approve and promote.
Both sides run one after the other in each repeat, threads pinned to 1 for both.
Last line: `first_champion_ratio=<dagster seconds / plain seconds>` (medians).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from run_command import answers, env_for, free_port, stop_group

ROOT = Path(__file__).resolve().parents[1]
PLAIN = """
import sys, time
started = time.perf_counter()
sys.path.insert(0, {bench!r})
from plain_lifecycle import run_plain_lifecycle
from unified_assets.settings import load_settings
result = run_plain_lifecycle(load_settings())
assert result.production, "the plain run promoted nothing"
print("champion", result.production["champion"], time.perf_counter() - started)
"""


def first_champion_under_dagster(home: Path, batches: int, rows: int, timeout: float
                                 ) -> dict[str, float]:
    import dagster as dg

    env = env_for(home) | {"PORT": str(free_port())}
    # scripts/dev.sh seeds 6 x 4000; other sizes are seeded here first (it then seeds nothing).
    if (batches, rows) != (6, 4000):
        subprocess.run([str(ROOT / ".venv/bin/unified-ai"), "generate", "--out",
                        str(home / "landing"), "--batches", str(batches), "--rows", str(rows)],
                       env=env, check=True, capture_output=True)
    log = (home.parent / f"{home.name}-dev.log").open("w")
    started, wall_started = time.perf_counter(), time.time()
    process = subprocess.Popen(["bash", "scripts/dev.sh"], cwd=ROOT, env=env, stdout=log,
                               stderr=subprocess.STDOUT, start_new_session=True)
    out: dict[str, float] = {}
    try:
        while "ui_answers" not in out:
            if answers(f"http://127.0.0.1:{env['PORT']}/server_info"):
                out["ui_answers"] = time.perf_counter() - started
            elif process.poll() is not None or time.perf_counter() - started > timeout:
                raise RuntimeError(f"dagster dev did not answer; see {log.name}")
            time.sleep(0.5)
        with dg.DagsterInstance.from_config(env["DAGSTER_HOME"]) as instance:
            key = dg.AssetKey("production_model")
            while instance.get_latest_materialization_event(key) is None:
                if process.poll() is not None or time.perf_counter() - started > timeout:
                    raise RuntimeError(f"no champion within {timeout:.0f}s; see {log.name}")
                time.sleep(0.5)
            out["first_champion"] = time.perf_counter() - started
            timeline(instance, wall_started)
    finally:
        stop_group(process)
    return out


def timeline(instance, wall_started: float) -> None:
    """Each run until the first champion: job, trigger, queued/start/end seconds from the
    start of the command, and each step's start and end (where the time goes)."""
    import dagster as dg

    for record in reversed(instance.get_run_records(limit=50)):
        run = record.dagster_run
        stats = instance.get_run_stats(run.run_id)
        def at(value):
            return f"{value - wall_started:6.1f}" if value else "     -"
        print(f"  run {run.job_name:24s} {run.tags.get('unified-ai/trigger', '-'):12s} "
              f"created {at(record.create_timestamp.timestamp())} start {at(stats.start_time)} "
              f"end {at(stats.end_time)} {run.status.value}")
        for step in sorted(instance.get_run_step_stats(run.run_id),
                           key=lambda s: s.start_time or 0):
            print(f"      {step.step_key:40s} start {at(step.start_time)} end {at(step.end_time)}")
    del dg


def plain(home: Path, batches: int, rows: int) -> float:
    env = env_for(home)
    subprocess.run([str(ROOT / ".venv/bin/unified-ai"), "generate", "--out", str(home / "landing"),
                    "--batches", str(batches), "--rows", str(rows)], env=env, check=True,
                   capture_output=True)
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", PLAIN.format(bench=str(ROOT / "bench"))], cwd=ROOT,
                   env=env, check=True, capture_output=True)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=6)
    parser.add_argument("--rows", type=int, default=4000)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--timeout", type=float, default=1200.0, help="per Dagster run, seconds")
    args = parser.parse_args()
    print(f"machine: cpus={os.cpu_count()} platform={platform.platform()} "
          f"python={platform.python_version()} load={os.getloadavg()[0]:.2f}")
    dagster_s, plain_s, ui_s = [], [], []
    with tempfile.TemporaryDirectory(prefix="first-champion-") as scratch:
        for index in range(args.repeats):
            run = first_champion_under_dagster(Path(scratch) / f"dagster-{index}", args.batches,
                                               args.rows, args.timeout)
            seconds = plain(Path(scratch) / f"plain-{index}", args.batches, args.rows)
            print(json.dumps({"repeat": index, **{k: round(v, 1) for k, v in run.items()},
                              "plain": round(seconds, 1)}))
            dagster_s.append(run["first_champion"])
            ui_s.append(run["ui_answers"])
            plain_s.append(seconds)
        shutil.rmtree(scratch, ignore_errors=True)
    ratio = statistics.median(dagster_s) / statistics.median(plain_s)
    print(f"UI answered after {statistics.median(ui_s):.1f}s; first champion after "
          f"{statistics.median(dagster_s):.1f}s; plain script {statistics.median(plain_s):.1f}s")
    print(f"first_champion_ratio={ratio:.2f}")


if __name__ == "__main__":
    main()
