"""The lifecycle on a local Ray cluster against the multiprocess executor, on the same data,
side by side in one run; and the time from a GPU node's loss to the policy's outcome.

Setup (untimed): landed batches are generated once; for each side a fresh home gets a copy,
the batches are ingested in process, and the code location is loaded. Timed: one
`train_evaluate_promote` run through `execute_job` (a persistent sqlite instance), with
  multiprocess: the local deployment's training executor (definitions.TRAINING_EXECUTOR_CONFIG:
                steps forked from a server that imported MLflow, torch and sklearn once),
  ray:          the `ray` deployment's executor (placement/ray_executor.py), every step a
                Ray job on a cluster started here (ray.cluster_utils: a CPU head, a worker
                with one logical GPU in the `gpu` pool; no CUDA on this machine, so the torch
                candidate's GPU placement runs on CPU and says so).
Sides alternate (multiprocess, ray, multiprocess, ...) and medians are compared.

Failover (Ray's default node health checks: a node is declared dead after 5 missed 3 s
checks): a GPU step holding the GPU (tests/ray/ray_defs.py, policy degrade_to_cpu) loses
its node; measured from the kill to the step's relaunch on CPU (the policy's outcome applied,
from the run's event log) and to the degraded step's success.

The code location is imported from this file's checkout (PYTHONPATH), so a clean worktree
can be measured while the main tree is being edited.

Usage: python bench/ray_runtime.py [--batches 6] [--rows 4000] [--repeats 2] [--keep]
The last line printed is `ray_overhead_ratio=<median ray / median multiprocess> failover_s=<s>`.
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
import threading
import time
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
PROJECT_ROOT = BENCH_DIR.parent
SIDES = ("multiprocess", "ray")
ADDRESS_ENV = "UNIFIED_AI_BENCH_RAY_ADDRESS"
JOB = "train_evaluate_promote"


def lifecycle_job_multiprocess() -> Any:
    """The code location's lifecycle job on the local deployment's executor."""
    return lifecycle_job("multiprocess")


def lifecycle_job_ray() -> Any:
    """The code location's lifecycle job on the `ray` deployment's executor. (One function
    per side: Dagster caches a reconstructable job per function in a process.)"""
    return lifecycle_job("ray")


def lifecycle_job(side: str) -> Any:
    """The lifecycle job with `side`'s executor; the step processes (forked or Ray jobs)
    rebuild it from the same environment."""
    import dagster as dg

    from unified_assets.definitions import (
        RAY_PRELOAD,
        TRAINING_EXECUTOR_CONFIG,
        build_definitions,
        lifecycle_job,
    )
    from unified_assets.settings import load_settings

    settings = load_settings()
    defs = build_definitions(settings)
    if side == "ray":
        from dataclasses import replace

        from unified_assets.placement.ray_executor import ray_executor_for

        executor = ray_executor_for(replace(settings, ray_address=os.environ.get(ADDRESS_ENV)),
                                    preload=RAY_PRELOAD)
    else:
        executor = dg.multiprocess_executor.configured(TRAINING_EXECUTOR_CONFIG)
    job = dg.define_asset_job(JOB, selection=lifecycle_job.selection, tags=lifecycle_job.tags,
                              executor_def=executor)
    return dg.Definitions(assets=list(defs.assets), resources=defs.resources,
                          jobs=[job]).resolve_job_def(JOB)


def machine() -> str:
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return (f"machine: cpus={os.cpu_count()} mem={memory:.0f}GiB "
            f"platform={platform.platform()} python={platform.python_version()}")


def prepare_home(landing: Path, home: Path) -> Any:
    """A fresh home with the landed batches ingested; returns its persistent instance."""
    import dagster as dg

    from unified_assets.definitions import build_definitions
    from unified_assets.lifecycle import ingest_landed
    from unified_assets.settings import load_settings

    shutil.copytree(landing, home / "landing")
    os.environ["UNIFIED_AI_HOME"] = str(home)
    (home / "dagster").mkdir()
    instance = dg.DagsterInstance.local_temp(tempdir=str(home / "dagster"))
    ingest_landed(build_definitions(load_settings()), instance)
    return instance


def timed_lifecycle(side: str, landing: Path, home: Path, address: str) -> dict[str, Any]:
    """In a fresh process (`--worker`): ingest (untimed), then one timed lifecycle run.
    A fresh process per run: the multiprocess executor's forkserver lives as long as the
    process that started it and keeps the environment (the home) of the first run."""
    import dagster as dg

    instance = prepare_home(landing, home)
    os.environ[ADDRESS_ENV] = address
    run_config = {}
    if side == "ray":
        run_config = {"execution": {"config": {
            "address": address, "env_vars": [f"PYTHONPATH={BENCH_DIR}:{PROJECT_ROOT}"]}}}
    import ray_runtime  # this file as a module: the step processes import it by that name

    job_fn = ray_runtime.lifecycle_job_ray if side == "ray" else ray_runtime.lifecycle_job_multiprocess
    started = time.perf_counter()
    result = dg.execute_job(dg.reconstructable(job_fn), instance=instance,
                            run_config=run_config, raise_on_error=False)
    seconds = time.perf_counter() - started
    steps = {s.step_key: (s.end_time - s.start_time if s.start_time and s.end_time else None,
                          s.status.value) for s in instance.get_run_step_stats(result.run_id)}
    return {"side": side, "seconds": seconds, "success": result.success, "steps": steps}


def run_side(side: str, landing: Path, home: Path, address: str) -> dict[str, Any]:
    out = home.with_suffix(".json")
    with open(home.with_suffix(".log"), "w") as log:
        subprocess.run([sys.executable, str(Path(__file__).resolve()), "--worker", side,
                        "--landing", str(landing), "--home", str(home), "--address", address,
                        "--out", str(out)], cwd=PROJECT_ROOT, stdout=log,
                       stderr=subprocess.STDOUT, check=True)
    return json.loads(out.read_text())


def failover(cluster: Any, instance: Any) -> dict[str, float]:
    """Kill the GPU node under a running GPU step (policy degrade_to_cpu); seconds from the
    kill to the relaunch on CPU and to the step's success there."""
    import dagster as dg
    from ray.job_submission import JobSubmissionClient

    from tests.ray import ray_defs

    os.environ[ray_defs.HOLD_ENV] = "120"
    os.environ[ray_defs.POLICY_ENV] = "degrade_to_cpu"
    result: dict[str, Any] = {}
    thread = threading.Thread(target=lambda: result.update(run=dg.execute_job(
        dg.reconstructable(ray_defs.gpu_chain_degrade_to_cpu), instance=instance,
        run_config=cluster.run_config(), raise_on_error=False)))
    thread.start()
    client = JobSubmissionClient(cluster.address)
    while not any((j.metadata or {}).get("dagster/op") == "gpu_a" and j.status.value == "RUNNING"
                  for j in client.list_jobs()):
        time.sleep(0.2)
    time.sleep(3)  # the step is inside its compute, holding the GPU
    killed = time.time()
    cluster.remove_gpu_node(wait_dead=False)
    thread.join()
    run = result["run"]
    records = instance.all_logs(run.run_id)

    def first(kind: str, after: float) -> float:
        return min(r.timestamp for r in records if r.step_key == "gpu_a" and r.dagster_event
                   and r.dagster_event.event_type_value == kind and r.timestamp >= after)

    relaunch = first("STEP_UP_FOR_RETRY", killed)
    return {"success": float(run.success), "to_policy_outcome_s": relaunch - killed,
            "to_degraded_success_s": first("STEP_SUCCESS", killed) - killed}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=6)  # the README run's data (6 x 4000)
    parser.add_argument("--rows", type=int, default=4000)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--keep", action="store_true")
    for hidden in ("--worker", "--landing", "--home", "--address", "--out"):
        parser.add_argument(hidden, help=argparse.SUPPRESS)
    args = parser.parse_args()
    sys.path[:0] = [str(BENCH_DIR), str(PROJECT_ROOT)]
    os.environ["PYTHONPATH"] = f"{BENCH_DIR}:{PROJECT_ROOT}"  # forked steps import ray_runtime
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    for name in ("UNIFIED_AI_DEPLOYMENT", "UNIFIED_AI_DATASET_SPEC", "DAGSTER_HOME",
                 "MLFLOW_TRACKING_URI", "UNIFIED_AI_HOME"):
        os.environ.pop(name, None)
    if args.worker:
        record = timed_lifecycle(args.worker, Path(args.landing), Path(args.home), args.address)
        Path(args.out).write_text(json.dumps(record))
        return

    import dagster as dg
    from ray.cluster_utils import Cluster

    from tests.ray.conftest import RayTestCluster, free_port
    from unified_assets.ml.generator import write_batches

    scratch = Path(tempfile.mkdtemp(prefix="uai-raybench-"))
    Path("/tmp/ray").mkdir(exist_ok=True)
    port = free_port()
    started = time.perf_counter()
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 4, "num_gpus": 0, "include_dashboard": True, "dashboard_host": "127.0.0.1",
        "dashboard_port": port, "dashboard_agent_listen_port": free_port(),
        "object_store_memory": 100_000_000, "temp_dir": str(scratch / "ray")})
    ray = RayTestCluster(cluster, f"http://127.0.0.1:{port}")
    ray.add_gpu_node()
    cluster_s = time.perf_counter() - started
    results: dict[str, list[dict[str, Any]]] = {side: [] for side in SIDES}
    try:
        landing = scratch / "landing-cache"
        write_batches(landing, args.batches, args.rows, seed=args.seed)
        for index in range(args.repeats):
            for side in SIDES:
                record = run_side(side, landing, scratch / f"{side}-{index}", ray.address)
                results[side].append(record)
                print(f"  run {index + 1}/{args.repeats} {side:<12} {record['seconds']:7.2f} s "
                      f"success={record['success']}", file=sys.stderr, flush=True)
        (scratch / "failover").mkdir()
        with dg.instance_for_test(temp_dir=str(scratch / "failover")) as instance:
            fail = failover(ray, instance)
    finally:
        cluster.shutdown()
        if args.keep:
            print(f"scratch kept in {scratch}", file=sys.stderr)
        else:
            shutil.rmtree(scratch, ignore_errors=True)

    print(machine() + f" load={os.getloadavg()[0]:.1f}")
    print(f"data: {args.batches} batches x {args.rows} rows (seed {args.seed}); {args.repeats} "
          f"lifecycle runs per side, alternating; Ray cluster up in {cluster_s:.1f} s (untimed)")
    steps = sorted({k for rs in results.values() for r in rs for k in r["steps"]})
    print(f"{'step (median s)':<22}" + "".join(f"{side:>14}" for side in SIDES))
    for step in steps:
        cells = []
        for side in SIDES:
            ran = [r["steps"][step][0] for r in results[side]
                   if step in r["steps"] and r["steps"][step][0] is not None]
            cells.append(f"{statistics.median(ran):14.2f}" if ran else f"{'skipped':>14}")
        print(f"{step:<22}" + "".join(cells))
    medians = {s: statistics.median(r["seconds"] for r in results[s]) for s in SIDES}
    print(f"{'run wall (median)':<22}" + "".join(f"{medians[s]:14.2f}" for s in SIDES))
    print("all runs succeeded: " + ", ".join(
        f"{s} {all(r['success'] for r in results[s])}" for s in SIDES))
    print(f"failover (default health checks): node killed -> policy outcome (relaunch on CPU) "
          f"{fail['to_policy_outcome_s']:.1f} s; -> degraded step succeeded "
          f"{fail['to_degraded_success_s']:.1f} s; run success {bool(fail['success'])}")
    print(f"ray_overhead_ratio={medians['ray'] / medians['multiprocess']:.3f} "
          f"failover_s={fail['to_policy_outcome_s']:.1f}")


if __name__ == "__main__":
    main()
