"""Wall time of the lifecycle through Dagster against the same computations called directly.

Setup (untimed): landed batches are generated once with
`unified_assets.ml.generator.write_batches` and copied into a fresh home per run.

Each run is a fresh subprocess (`--worker plain|dagster`) that, before its timer starts,
imports the same modules (dagster, mlflow and its sklearn/pyfunc flavours, torch,
sklearn, evidently, pandas, pyarrow, the code location and the plain baseline) and initialises
its own fresh MLflow sqlite DB (schema migrations) by creating the registry's
`MlflowClient` and calling `search_experiments` and `search_registered_models`. The
Dagster side also creates its fresh `DagsterInstance.local_temp()` before the timer
(its creation time is reported apart), configured by the local instance's dagster.yaml
(deploy/local/dagster.yaml: its event log and compute logs, pools, telemetry off), as
`dagster dev` runs it. Timed:

  dagster: `unified_assets.lifecycle.run_lifecycle(settings, instance)`
  plain:   `bench/plain_lifecycle.run_plain_lifecycle(settings)`

Runs are interleaved (plain, dagster, plain, dagster, ...) and the median of each side
is compared. Worker stdout/stderr (Dagster's console log) go to a file in the run's home.

Threads: `--threads 1` (the default) sets OMP/OpenBLAS/MKL threads and torch's intra-op
threads to 1 in both workers. On a small shared host, two-thread OpenMP training
(HistGradientBoosting, torch) spin-waits whenever another process takes a CPU, and one
fit then varies 1 s -> 17 s from run to run, which drowns the orchestration overhead
being measured. `--threads 0` leaves the libraries' defaults. For the timed section each
worker also reports its own CPU seconds ("cpu s": process, threads and reaped children)
and the busy CPU seconds of everything else on the host ("other cpu s", from /proc/stat:
other processes and kernel threads). On a 2-CPU host, other ~= 2 x wall - own means the
host was saturated: the worker then waits for a CPU after every blocking call (each
SQLite fsync), and wall - own CPU is that waiting.

Usage: python bench/lifecycle_overhead.py [--batches 8] [--rows 5000] [--repeats 9]
       [--threads 1] [--keep] [--compare-untuned] [--compare-stock-log] [--warm-lazy]
"full gc" in the per-run table: the collector's full passes in the timed section and their
seconds (each walks every object the worker loaded, about 0.5 s here: a side that crosses
the collector's threshold and the other not would differ by that, not by orchestration).
Both timed sections include what torch and MLflow do once per process on first use
(LAZY_WARMUP, about 2.5-3 s of the plain side's 5 s); `--warm-lazy` does it before the timer.
The last line printed is `overhead_ratio=<median(dagster)/median(plain)>`.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
PROJECT_ROOT = BENCH_DIR.parent
SIDES = ("plain", "dagster")
# `--compare-untuned`: a third worker per repeat, the Dagster side with the local instance's
# SQLite tuning off (UNIFIED_AI_SQLITE_TUNING=off, unified_assets/instance_sqlite.py).
UNTUNED = "dagster_untuned"
# `--compare-stock-log`: a worker per repeat whose instance uses Dagster's own SQLite event
# log instead of the local instance's (deploy/local/dagster.yaml `event_log_storage`,
# unified_assets/instance_event_log.py).
STOCK_LOG = "dagster_stock_log"
DAGSTER_SIDES = ("dagster", UNTUNED, STOCK_LOG)

# Imported by both workers before the timer, so import cost is outside both figures.
WARM_MODULES = [
    "dagster", "pandas", "pyarrow.parquet", "sklearn.ensemble", "sklearn.metrics", "torch",
    "mlflow", "mlflow.sklearn", "mlflow.pyfunc", "evidently", "evidently.presets",
    "unified_assets.definitions", "unified_assets.ml.evidently_report",
    "unified_assets.lifecycle", "unified_assets.ml.torch_model", "unified_assets.ml.sklearn_model",
    "unified_assets.ml.metrics", "plain_lifecycle",
]
# `--warm-lazy`: what torch and MLflow import or compute on first use inside the timed section
# on both sides (torch._dynamo at the first optimizer, 1.1-1.8 s; MLflow's map of installed
# distributions at the first log_model, 1.1-1.6 s), done before the timer instead, as the
# training preload does for the steps `dagster dev` runs (unified_assets/definitions.py).
LAZY_WARMUP = ["torch._dynamo", "resources.mlflow_environment"]
LIFECYCLE_STEPS = ["training_set", "model_sklearn", "model_torch", "evaluation_sklearn",
                   "evaluation_torch", "challenger", "approval", "production_model"]


def machine() -> str:
    """One line describing the host and interpreter."""
    return (f"machine: cpus={os.cpu_count()} platform={platform.platform()} "
            f"python={platform.python_version()} ({sys.executable})")


def host_busy_seconds() -> float:
    """CPU seconds all CPUs of the host spent busy (not idle, iowait or steal) since boot."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:8]]
    user, nice, system, _idle, _iowait, irq, softirq = fields
    return (user + nice + system + irq + softirq) / os.sysconf("SC_CLK_TCK")


def own_cpu_seconds() -> float:
    """CPU seconds of this process (all threads) and its reaped children."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def warm_mlflow(settings: Any) -> float:
    """Create and migrate this home's MLflow DB the way both sides will open it; seconds."""
    from plain_lifecycle import plain_resources

    started = time.perf_counter()
    client = plain_resources(settings)[2].client()
    client.search_experiments()
    client.search_registered_models()
    return time.perf_counter() - started


def dagster_step_stats(instance: Any) -> dict[str, float]:
    """Seconds per run and per step from the instance's event log (read after the timer)."""
    ingest_runs = ingest_steps = 0.0
    out: dict[str, float] = {}
    for run in instance.get_runs():
        stats = instance.get_run_stats(run.run_id)
        run_seconds = (stats.end_time or 0.0) - (stats.start_time or 0.0)
        steps = {s.step_key: (s.end_time or 0.0) - (s.start_time or 0.0)
                 for s in instance.get_run_step_stats(run.run_id)}
        if run.job_name == "ingest_batch":
            ingest_runs += run_seconds
            ingest_steps += sum(steps.values())
        else:
            out["lifecycle run (start->end)"] = run_seconds
            out |= steps
    out["ingest runs (start->end, sum)"] = ingest_runs
    out["ingest (all batches)"] = ingest_steps
    return out


class FullCollections:
    """A `gc.callbacks` entry counting the collector's full (generation 2) passes and their
    seconds."""

    def __init__(self) -> None:
        self.count, self.seconds, self._started = 0, 0.0, 0.0

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if info["generation"] != 2:
            return
        if phase == "start":
            self._started = time.perf_counter()
        else:
            self.count += 1
            self.seconds += time.perf_counter() - self._started


def worker(side: str, home: Path, out: Path, threads: int, warm_lazy: bool = False) -> None:
    """Run one side in this (fresh) process and write its timings as JSON to `out`."""
    sys.path.insert(0, str(BENCH_DIR))
    started = time.perf_counter()
    for module in WARM_MODULES + (LAZY_WARMUP if warm_lazy else []):
        importlib.import_module(module)
    import_seconds = time.perf_counter() - started
    if threads:
        import torch

        torch.set_num_threads(threads)

    import dagster as dg
    from plain_lifecycle import plain_resources, run_plain_lifecycle

    from unified_assets.lifecycle import run_lifecycle
    from unified_assets.settings import Settings

    settings = Settings(deployment="local", home=home, dataset_spec=None)
    record: dict[str, Any] = {"side": side, "import_s": import_seconds,
                              "mlflow_init_s": warm_mlflow(settings)}
    instance = None
    if side in DAGSTER_SIDES:
        started = time.perf_counter()
        (home / "dagster").mkdir()
        import yaml

        # The local instance, as `dagster dev` runs it (STOCK_LOG: on Dagster's event log).
        local = yaml.safe_load((PROJECT_ROOT / "deploy/local/dagster.yaml").read_text())
        if side == STOCK_LOG:
            local.pop("event_log_storage")
        (home / "dagster" / "dagster.yaml").write_text(yaml.safe_dump(local))
        os.environ["DAGSTER_HOME"] = str(home / "dagster")
        instance = dg.DagsterInstance.local_temp(tempdir=str(home / "dagster"))
        record["instance_init_s"] = time.perf_counter() - started
    gc.collect()
    full = FullCollections()
    gc.callbacks.append(full)

    host_before, own_before = host_busy_seconds(), own_cpu_seconds()
    started = time.perf_counter()
    if instance is not None:
        summary = run_lifecycle(settings, instance)
        seconds = time.perf_counter() - started
        record |= {"batches": len(summary.batches_ingested),
                   "phases": dagster_step_stats(instance)}
    else:
        result = run_plain_lifecycle(settings)
        seconds = time.perf_counter() - started
        record |= {"batches": len(result.batches_ingested), "phases": result.phases}
    record["seconds"] = seconds
    gc.callbacks.remove(full)
    record["full_gc"], record["full_gc_s"] = full.count, full.seconds
    record["cpu_s"] = own_cpu_seconds() - own_before
    record["other_cpu_s"] = max(0.0, host_busy_seconds() - host_before - record["cpu_s"])
    dataset, _, registry = plain_resources(settings)
    record["champion"] = registry.alias_version(dataset.spec.name)  # read back after the timer
    record["roc_auc"] = {f: (summary.candidates if instance is not None else result.candidates)[f]
                         .overall["roc_auc"] for f in ("sklearn", "torch")}
    out.write_text(json.dumps(record))


def worker_env(home: Path, threads: int, side: str = "dagster") -> dict[str, str]:
    """Environment of a worker: its own home, no outer deployment/Dagster/MLflow settings."""
    env = os.environ | {"UNIFIED_AI_HOME": str(home),
                        "UNIFIED_AI_SQLITE_TUNING": "off" if side == UNTUNED else "on"}
    if threads:
        env |= {name: str(threads) for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                                                "MKL_NUM_THREADS")}
    for name in ("UNIFIED_AI_DEPLOYMENT", "UNIFIED_AI_DATASET_SPEC", "DAGSTER_HOME",
                 "MLFLOW_TRACKING_URI", "UNIFIED_AI_LOCAL_WARM"):  # no warm server beside it
        env.pop(name, None)
    return env


def run_side(side: str, landing_cache: Path, scratch: Path, index: int, threads: int,
             warm_lazy: bool = False) -> dict[str, Any]:
    """One fresh home with a copy of the landed data, one fresh worker process."""
    home = scratch / f"{side}-{index}"
    shutil.copytree(landing_cache, home / "landing")
    out = home / "result.json"
    env = worker_env(home, threads, side)
    with open(home / "worker.log", "w") as log:
        subprocess.run(
            [sys.executable, str(Path(__file__).resolve()), "--worker", side, "--home", str(home),
             "--out", str(out), "--threads", str(threads), *(["--warm-lazy"] if warm_lazy else [])],
            cwd=PROJECT_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, check=True,
        )
    return json.loads(out.read_text())


def print_table(results: dict[str, list[dict[str, Any]]]) -> None:
    """Median seconds per phase: plain phases beside Dagster step durations."""
    def med(side: str, key: str) -> float | None:
        values = [r["phases"][key] for r in results[side] if key in r["phases"]]
        return statistics.median(values) if values else None

    def cell(value: float | None) -> str:
        return f"{value:>10.3f}" if value is not None else f"{'-':>10}"

    print("\nmedian seconds per phase (dagster: step durations from the event log)")
    header = f"{'phase':<32} {'plain':>10} {'dagster':>10}"
    print(header)
    print("-" * len(header))
    for key in ["ingest (all batches)", *LIFECYCLE_STEPS]:
        print(f"{key:<32} {cell(med('plain', key))} {cell(med('dagster', key))}")
    for key in ["ingest runs (start->end, sum)", "lifecycle run (start->end)"]:
        print(f"{key:<32} {cell(None)} {cell(med('dagster', key))}")
    totals = {side: statistics.median(r["seconds"] for r in results[side]) for side in SIDES}
    print(f"{'TOTAL wall (timed)':<32} {cell(totals['plain'])} {cell(totals['dagster'])}")
    for key, label in (("cpu_s", "own CPU (timed)"), ("other_cpu_s", "other processes' CPU")):
        values = {side: statistics.median(r[key] for r in results[side]) for side in SIDES}
        print(f"{label:<32} {cell(values['plain'])} {cell(values['dagster'])}")

    print("\nper run (seconds, in run order)")
    header = (f"{'run':<4} {'side':<8} {'timed s':>8} {'cpu s':>7} {'other cpu s':>12} "
              f"{'imports s':>10} {'mlflow init s':>14} {'instance s':>11} {'batches':>8} "
              f"{'champion':>9} {'full gc':>8}  roc_auc sklearn/torch")
    print(header)
    print("-" * len(header))
    order = [r for pair in zip(results["plain"], results["dagster"], strict=True) for r in pair]
    for i, r in enumerate(order):
        instance = r.get("instance_init_s")
        print(f"{i // 2 + 1:<4} {r['side']:<8} {r['seconds']:>8.2f} {r['cpu_s']:>7.2f} "
              f"{r['other_cpu_s']:>12.2f} {r['import_s']:>10.2f} "
              f"{r['mlflow_init_s']:>14.2f} "
              f"{(f'{instance:.2f}' if instance is not None else '-'):>11} {r['batches']:>8} "
              f"{str(r['champion']):>9} {r['full_gc']:>2} {r['full_gc_s']:>5.2f}  "
              f"{r['roc_auc']['sklearn']:.4f}/{r['roc_auc']['torch']:.4f}")


def main() -> None:
    """Generate data, run interleaved workers, print tables and the `overhead_ratio=` line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=8, help="landed batches (default 8)")
    parser.add_argument("--rows", type=int, default=5000, help="rows per batch (default 5000)")
    # Nine: one run of the same work varies by a quarter on a shared 2-core host, which moves
    # a median of three by about 0.1 (bench/RESULTS.md).
    parser.add_argument("--repeats", type=int, default=9, help="runs per side (default 9)")
    parser.add_argument("--seed", type=int, default=7, help="generator seed (default 7)")
    parser.add_argument("--threads", type=int, default=1,
                        help="OpenMP/BLAS/torch threads per worker; 0 = library defaults (default 1)")
    parser.add_argument("--keep", action="store_true", help="keep the scratch homes and logs")
    parser.add_argument("--compare-untuned", action="store_true",
                        help="also run the Dagster side with the SQLite tuning off, each repeat")
    parser.add_argument("--compare-stock-log", action="store_true",
                        help="also run the Dagster side on Dagster's own SQLite event log")
    parser.add_argument("--warm-lazy", action="store_true",
                        help="import torch._dynamo and map MLflow's distributions before the "
                             "timer on both sides (LAZY_WARMUP)")
    parser.add_argument("--worker", choices=(*SIDES, UNTUNED, STOCK_LOG), help=argparse.SUPPRESS)
    parser.add_argument("--home", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.home, args.out, args.threads, args.warm_lazy)
        return

    from unified_assets.ml.generator import write_batches

    scratch = Path(tempfile.mkdtemp(prefix="unified-ai-overhead-"))
    try:
        landing_cache = scratch / "landing-cache"
        write_batches(landing_cache, args.batches, args.rows, seed=args.seed)
        sides = (*SIDES, *((UNTUNED,) if args.compare_untuned else ()),
                 *((STOCK_LOG,) if args.compare_stock_log else ()))
        results: dict[str, list[dict[str, Any]]] = {side: [] for side in sides}
        for index in range(args.repeats):
            for side in sides:
                record = run_side(side, landing_cache, scratch, index, args.threads,
                                  args.warm_lazy)
                results[side].append(record)
                print(f"  run {index + 1}/{args.repeats} {side:<7} {record['seconds']:7.2f} s",
                      file=sys.stderr, flush=True)
    finally:
        if args.keep:
            print(f"scratch kept in {scratch}", file=sys.stderr)
        else:
            shutil.rmtree(scratch, ignore_errors=True)

    print(machine())
    print(f"data: {args.batches} batches x {args.rows} rows (seed {args.seed}); "
          f"repeats: {args.repeats} per side, interleaved plain/dagster, fresh subprocess each; "
          "imports and MLflow DB init done before the timer on both sides"
          f"{' (with LAZY_WARMUP)' if args.warm_lazy else ''}; "
          f"threads: {args.threads or 'library defaults'}")
    print_table(results)
    plain = statistics.median(r["seconds"] for r in results["plain"])
    dagster = statistics.median(r["seconds"] for r in results["dagster"])
    print(f"\nmedian plain {plain:.2f} s, median dagster {dagster:.2f} s, "
          f"difference {dagster - plain:+.2f} s")
    fastest = {side: min(r["seconds"] for r in results[side]) for side in SIDES}
    cpu = {side: statistics.median(r["cpu_s"] for r in results[side]) for side in SIDES}
    print(f"ratio of fastest runs {fastest['dagster'] / fastest['plain']:.3f} "
          f"({fastest['dagster']:.2f} / {fastest['plain']:.2f} s); "
          f"ratio of median own CPU {cpu['dagster'] / cpu['plain']:.3f}")
    for side, label, suffix, speedup in (
            (STOCK_LOG, "on Dagster's own event log", "stock_log", "event_log_speedup"),
            (UNTUNED, "with the SQLite tuning off", "untuned", "sqlite_tuning_speedup")):
        if results.get(side):  # a variant of the Dagster side, measured in the same repeats
            each = [r["seconds"] for r in results[side]]
            collections = [r["full_gc_s"] for r in results[side]]
            median = statistics.median(each)
            print(f"median dagster {label} {median:.2f} s "
                  f"({', '.join(f'{x:.2f}' for x in each)}; full gc "
                  f"{', '.join(f'{x:.2f}' for x in collections)} s); "
                  f"overhead_ratio_{suffix}="
                  f"{median / plain:.3f} {speedup}={median / dagster:.3f}")
    print(f"overhead_ratio={dagster / plain:.3f}")


if __name__ == "__main__":
    main()
