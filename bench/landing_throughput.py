"""Landing throughput: many batches landed at once under the README's run command, against
the same validation, curation, profiling and drift called in a plain loop.

    .venv/bin/python bench/landing_throughput.py [--batches 500] [--rows 1000]

Dagster side: `bash scripts/dev.sh` on a fresh state folder (free PORT and MLFLOW_PORT; it
seeds 6 x 4000 batches and trains the first champion by itself). Once that champion exists
and the instance is idle (so drift is judged against a champion and nothing else runs), the
batches (generated beforehand in a staging folder) are moved into the landing zone at once
and the clock starts. It stops when every new batch is ingested and judged for drift: a
`batch_drift` materialization after the clock started, or, for a batch its checks rejected,
its rejected `landed_batch` materialization. Polled every second from here.
Plain side: one fresh process on a copy of the same files and the same champion's training
batches: the `landed_batch` body for each batch (validate, curate, write, profile, report)
and the `batch_drift` body (drift of its profile against the champion's merged profile).
Last line: `landing_ratio=<dagster s / plain s> batches_per_min=<Dagster batches per minute>`.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from run_command import answers, env_for, free_port, stop_group

ROOT = Path(__file__).resolve().parents[1]
IN_FLIGHT = ("QUEUED", "NOT_STARTED", "STARTING", "STARTED", "CANCELING")

PLAIN = """
import sys, time
sys.path.insert(0, {bench!r})
from plain_lifecycle import ingest
from resources.artifact_store import ArtifactStore
from resources.dataset import DatasetResource
from resources.policy import PolicyResource
from unified_assets.definitions import build_definitions
from plain_lifecycle import profile_key, report_key
from unified_assets.ml.drift_judgement import judge_drift
from unified_assets.settings import load_settings
import dagster as dg

settings = load_settings()
defs = build_definitions(settings)
with dg.build_resources({{k: defs.resources[k] for k in ("dataset", "store", "policy")}}) as r:
    dataset, store, policy = r.dataset, r.store, r.policy.policy.drift
    reference_batches = {reference!r}
    ingest(dataset, store)  # untimed: the champion's training batches, layout and profiles
    reference = [store.read_json(profile_key(b)) for b in reference_batches]
    new = {new!r}
    for path in settings.landing_dir.glob("*.parquet"):
        path.unlink()  # the champion's batches are in the store; only the new ones are timed
    for name in new:  # the landed batches arrive
        staged = settings.landing_dir.parent / "staging" / name
        (settings.landing_dir / name).write_bytes(staged.read_bytes())
    started = time.perf_counter()
    ingested = [b for b in ingest(dataset, store) if b not in reference_batches]
    judged = [judge_drift(reference, store.read_json(profile_key(b)), policy) for b in ingested
              if store.exists(profile_key(b)) and store.read_json(report_key(b))["passed"]]
    print("plain", len(ingested), len(judged), time.perf_counter() - started)
"""





def generate(folder: Path, env: dict, batches: int, rows: int, first: int) -> list[str]:
    subprocess.run([str(ROOT / ".venv/bin/unified-ai"), "generate", "--out", str(folder),
                    "--batches", str(batches), "--rows", str(rows), "--first-batch", str(first)],
                   env=env, check=True, capture_output=True)
    return sorted(p.name for p in folder.glob("*.parquet"))


def judged(instance, keys: set[str], after: int) -> set[str]:
    """Keys with a batch_drift decision, or a rejection, recorded after storage id `after`."""
    import dagster as dg

    done: set[str] = set()
    for asset in ("batch_drift", "landed_batch"):
        cursor = after
        while True:
            records = instance.fetch_materializations(
                dg.AssetRecordsFilter(asset_key=dg.AssetKey(asset), after_storage_id=cursor),
                limit=1000, ascending=True).records
            for record in records:
                mat = record.asset_materialization
                if asset == "batch_drift" or mat.metadata.get("passed_quality_checks") and \
                        mat.metadata["passed_quality_checks"].value is False:
                    done.add(mat.partition)
            if len(records) < 1000:
                break
            cursor = records[-1].storage_id
    return done & keys


def idle(instance) -> bool:
    import dagster as dg

    statuses = [dg.DagsterRunStatus[s] for s in IN_FLIGHT]
    return not instance.get_run_records(dg.RunsFilter(statuses=statuses), limit=1)


def under_dagster(home: Path, staging: Path, names: list[str], timeout: float) -> dict:
    import dagster as dg

    env = env_for(home) | {"PORT": str(free_port()), "MLFLOW_PORT": str(free_port())}
    log = (home.parent / f"{home.name}-dev.log").open("w")
    process = subprocess.Popen(["bash", "scripts/dev.sh"], cwd=ROOT, env=env, stdout=log,
                               stderr=subprocess.STDOUT, start_new_session=True)
    started = time.perf_counter()
    out: dict = {}
    try:
        with_deadline = lambda what: (process.poll() is None  # noqa: E731
                                      and time.perf_counter() - started < timeout) or \
            (_ for _ in ()).throw(RuntimeError(f"{what}; see {log.name}"))
        while not answers(f"http://127.0.0.1:{env['PORT']}/server_info"):
            with_deadline("dagster dev did not answer")
            time.sleep(1)
        with dg.DagsterInstance.from_config(env["DAGSTER_HOME"]) as instance:
            key = dg.AssetKey("production_model")
            while instance.get_latest_materialization_event(key) is None:
                with_deadline("no champion")
                time.sleep(1)
            quiet_since = None
            while quiet_since is None or time.perf_counter() - quiet_since < 20:
                with_deadline("never idle after the first champion")
                quiet_since = (quiet_since or time.perf_counter()) if idle(instance) else None
                time.sleep(1)
            out["champion_and_idle_s"] = time.perf_counter() - started
            after = instance.event_log_storage.get_maximum_record_id() or 0
            keys = {n.removesuffix(".parquet") for n in names}
            landing = home / "landing"
            clock = time.perf_counter()
            for name in names:  # a rename: each file appears complete, all at once
                os.replace(staging / name, landing / name)
            done: set[str] = set()
            while done != keys:
                with_deadline(f"{len(keys - done)} batches not judged")
                time.sleep(1)
                done = judged(instance, keys, after)
            out["dagster_s"] = time.perf_counter() - clock
            since = datetime.datetime.fromtimestamp(time.time() - out["dagster_s"],
                                                    tz=datetime.UTC)
            out["runs"] = {job: len(instance.get_run_records(dg.RunsFilter(
                job_name=job, created_after=since), limit=5000)) for job in
                ("ingest_batch", "__ASSET_JOB")}
            out["timeline"] = timeline(instance, since)
    finally:
        stop_group(process)
    return out


def timeline(instance, since: datetime.datetime) -> list[str]:
    """Where the window went: each run created in it, seconds from the clock's start to its
    creation, start and end, and its steps' durations (from Dagster's own step stats)."""
    import dagster as dg

    zero = since.timestamp()
    lines = []
    for record in sorted(instance.get_run_records(dg.RunsFilter(created_after=since),
                                                  limit=5000),
                         key=lambda r: r.create_timestamp.timestamp()):
        run = record.dagster_run
        at = [f"{t - zero:6.1f}" if t else "     -" for t in
              (record.create_timestamp.timestamp(), record.start_time, record.end_time)]
        steps = ", ".join(f"{s.step_key} {s.end_time - s.start_time:.1f}s"
                          for s in instance.get_run_step_stats(run.run_id)
                          if s.start_time and s.end_time)
        what = run.tags.get("dagster/asset_partition_range_start", "")
        if what:
            what += ".." + run.tags.get("dagster/asset_partition_range_end", "")
        assets = ",".join(sorted(k.to_user_string() for k in run.asset_selection or ()))
        lines.append(f"  {run.job_name:<14} {assets:<24} {what:<28} created {at[0]} started {at[1]} "
                     f"ended {at[2]} {run.status.value:<8} {steps}")
    return lines


def plain(home: Path, names: list[str], seeded: Path) -> float:
    env = env_for(home)
    (home / "landing").mkdir(parents=True)
    for path in seeded.glob("*.parquet"):
        shutil.copy(path, home / "landing" / path.name)
    reference = sorted(p.stem for p in seeded.glob("*.parquet"))
    code = PLAIN.format(bench=str(ROOT / "bench"), reference=reference, new=names)
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, check=True,
                            capture_output=True, text=True)
    line = [x for x in result.stdout.splitlines() if x.startswith("plain ")][-1]
    return float(line.split()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=500)
    parser.add_argument("--rows", type=int, default=1000)
    parser.add_argument("--timeout", type=float, default=3600.0)
    args = parser.parse_args()
    print(f"machine: cpus={os.cpu_count()} platform={platform.platform()} "
          f"python={platform.python_version()} load={os.getloadavg()}")
    with tempfile.TemporaryDirectory(prefix="landing-throughput-") as scratch:
        scratch_path = Path(scratch)
        home = scratch_path / "dagster"
        staging = scratch_path / "staging"
        names = generate(staging, env_for(home), args.batches, args.rows, first=6)
        # The plain side gets the same files and the same seeded champion batches.
        plain_home = scratch_path / "plain"
        shutil.copytree(staging, plain_home / "staging")
        seeded = scratch_path / "seeded"
        generate(seeded, env_for(home), 6, 4000, first=0)
        (home / "landing").mkdir(parents=True)
        for path in seeded.glob("*.parquet"):
            shutil.copy(path, home / "landing" / path.name)
        run = under_dagster(home, staging, names, args.timeout)
        plain_s = plain(plain_home, names, seeded)
        print(f"load after: {os.getloadavg()}")
        shutil.rmtree(scratch, ignore_errors=True)
    ratio = run["dagster_s"] / plain_s
    per_min = len(names) / run["dagster_s"] * 60
    print(f"champion and idle after {run['champion_and_idle_s']:.1f}s; {len(names)} batches x "
          f"{args.rows} rows judged under Dagster in {run['dagster_s']:.1f}s "
          f"(runs: {run['runs']}); plain loop {plain_s:.1f}s")
    print("runs in the window (seconds from the clock's start):")
    print("\n".join(run["timeline"]))
    print(f"landing_ratio={ratio:.2f} batches_per_min={per_min:.1f}")


if __name__ == "__main__":
    main()
