"""Where the Dagster side of `lifecycle_overhead.py` spends its time beyond the asset bodies.

Same setup as `lifecycle_overhead.py` (generated batches, fresh home, imports and the
MLflow DB warmed before the timer, one OpenMP/BLAS/torch thread by default). Inside a
fresh worker process, `run_lifecycle` is timed with exclusive (self-time) timers wrapped
around Dagster internals, so the buckets add up to the total:

  asset bodies          `invoke_compute_fn`: the user functions (same work as plain),
                        generator bodies timed between their yields
  definitions           `build_definitions` and `Definitions.resolve_job_def`
  execution plan        `create_execution_plan` in `execute_in_process`
  create_run            `DagsterInstance.create_run_for_job` minus the storage calls in it
  event log writes      `<event log storage>.store_*` (each event: its own transaction)
  event log reads       the event log storage's other public methods
  event shard init      `SqliteEventLogStorage._initdb` (one new sqlite DB per run)
  run storage           the run storage's public methods (runs.db)
  compute-log capture   `<compute log manager>.capture_logs` set-up and tear-down
  io manager            `PickledObjectFilesystemIOManager.handle_output/load_input`
  console log           `logging.StreamHandler.emit` (Dagster's DEBUG console log, to a file)
  other                 the rest of `execute_in_process` and `run_lifecycle`

Storage calls made from inside an asset body (e.g. `training_set` reading partitions)
count to the storage buckets, not to the asset bodies. Each bucket's median is taken on
its own, so the bucket medians need not add up to the median total. A second table gives
the main thread's CPU seconds per bucket: wall minus CPU is time spent waiting (SQLite
fsyncs, a busy host).

Variants change only the instance, to show what each cost is made of:

  local_temp            `DagsterInstance.local_temp()` (what lifecycle_overhead.py uses)
  noop_compute_logs     local_temp + NoOpComputeLogManager
  consolidated_events   local_temp + ConsolidatedSqliteEventLogStorage (one DB, no shards)
  ephemeral             `DagsterInstance.ephemeral()` (in-memory storages)

Usage: python bench/dagster_overhead_breakdown.py [--repeats 3] [--variants a,b] [--threads 1]
       [--top 20]
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import inspect
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR))

import lifecycle_overhead as lo  # noqa: E402 - sibling script, found through sys.path

VARIANTS = ("local_temp", "noop_compute_logs", "consolidated_events", "ephemeral")
BUCKETS = ["asset bodies", "definitions", "execution plan", "create_run", "event log writes",
           "event log reads", "event shard init", "run storage", "compute-log capture",
           "io manager", "console log", "other"]
WRITE_PREFIXES = ("store", "add", "update", "handle", "upsert", "delete", "wipe", "reindex",
                  "set", "free", "enable", "initialize")


class SelfTimer:
    """Exclusive timers: time spent in a bucket minus time in nested timed buckets."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.cpu: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)
        self.detail: dict[str, list[float]] = defaultdict(lambda: [0, 0.0])
        self._stack: list[list[Any]] = []

    @contextlib.contextmanager
    def span(self, bucket: str, what: str = "") -> Iterator[None]:
        frame = [bucket, time.perf_counter(), 0.0, time.thread_time(), 0.0]
        self._stack.append(frame)
        try:
            yield
        finally:
            self._stack.pop()
            elapsed = time.perf_counter() - frame[1]
            cpu = time.thread_time() - frame[3]
            self.seconds[bucket] += elapsed - frame[2]
            self.cpu[bucket] += cpu - frame[4]
            self.calls[bucket] += 1
            entry = self.detail[f"{bucket}: {what}" if what else bucket]
            entry[0] += 1
            entry[1] += elapsed - frame[2]
            if self._stack:
                self._stack[-1][2] += elapsed
                self._stack[-1][4] += cpu

    def wrap(self, owner: Any, name: str, bucket: str) -> None:
        """Replace `owner.name` by a timed call of the original."""
        original: Callable[..., Any] = getattr(owner, name)
        what = f"{getattr(original, '__qualname__', name)}"

        @functools.wraps(original)
        def timed(*args: Any, **kwargs: Any) -> Any:
            with self.span(bucket, what):
                return original(*args, **kwargs)

        setattr(owner, name, timed)

    def timed_iterator(self, generator: Iterator[Any]) -> Iterator[Any]:
        """Re-yield a generator asset body's items, timing the body between yields."""
        while True:
            with self.span("asset bodies", "generator body"):
                try:
                    item = next(generator)
                except StopIteration as stop:
                    return stop.value
            yield item

    def wrap_context_manager(self, owner: Any, name: str, bucket: str) -> None:
        """Time a context manager's set-up and tear-down, not its body."""
        original: Callable[..., Any] = getattr(owner, name)

        @contextlib.contextmanager
        def timed(*args: Any, **kwargs: Any) -> Iterator[Any]:
            manager = original(*args, **kwargs)
            with self.span(bucket):
                value = manager.__enter__()
            try:
                yield value
            except BaseException:
                with self.span(bucket):
                    if not manager.__exit__(*sys.exc_info()):
                        raise
            else:
                with self.span(bucket):
                    manager.__exit__(None, None, None)

        setattr(owner, name, timed)


def make_instance(variant: str, home: Path) -> Any:
    """A fresh instance of the given variant rooted in `home / "dagster"`."""
    import dagster as dg

    base = home / "dagster"
    base.mkdir()
    if variant == "ephemeral":
        return dg.DagsterInstance.ephemeral(tempdir=str(base))
    overrides: dict[str, Any] = {}
    if variant == "noop_compute_logs":
        overrides["compute_logs"] = {"module": "dagster._core.storage.noop_compute_log_manager",
                                     "class": "NoOpComputeLogManager"}
    if variant == "consolidated_events":
        overrides["event_log_storage"] = {"module": "dagster._core.storage.event_log",
                                          "class": "ConsolidatedSqliteEventLogStorage",
                                          "config": {"base_dir": str(base / "events")}}
    return dg.DagsterInstance.local_temp(tempdir=str(base), overrides=overrides or None)


def public_methods(obj: Any) -> list[str]:
    """Names of the public methods of `obj` (bound callables not starting with `_`)."""
    names = []
    for name in dir(type(obj)):
        if name.startswith("_"):
            continue
        attribute = getattr(type(obj), name, None)
        if callable(attribute) and not isinstance(attribute, type | property):
            names.append(name)
    return names


def instrument(timer: SelfTimer, instance: Any) -> None:
    """Install the timers on the Dagster internals and project functions named above."""
    import logging

    import dagster as dg
    from dagster._core.execution import execute_in_process
    from dagster._core.execution.plan import compute_generator
    from dagster._core.storage.event_log.sqlite.sqlite_event_log import SqliteEventLogStorage
    from dagster._core.storage.fs_io_manager import PickledObjectFilesystemIOManager

    import unified_assets.lifecycle as lifecycle

    original_invoke = compute_generator.invoke_compute_fn

    def invoke_timed(*args: Any, **kwargs: Any) -> Any:
        with timer.span("asset bodies", "invoke_compute_fn"):
            result = original_invoke(*args, **kwargs)
        return timer.timed_iterator(result) if inspect.isgenerator(result) else result

    compute_generator.invoke_compute_fn = invoke_timed
    timer.wrap(lifecycle, "build_definitions", "definitions")
    timer.wrap(dg.Definitions, "resolve_job_def", "definitions")
    timer.wrap(execute_in_process, "create_execution_plan", "execution plan")
    timer.wrap(instance, "create_run_for_job", "create_run")
    events = instance.event_log_storage
    for name in public_methods(events):
        timer.wrap(events, name,
                   "event log writes" if name.startswith(WRITE_PREFIXES) else "event log reads")
    for name in public_methods(instance.run_storage):
        timer.wrap(instance.run_storage, name, "run storage")
    timer.wrap(SqliteEventLogStorage, "_initdb", "event shard init")
    timer.wrap(logging.StreamHandler, "emit", "console log")
    timer.wrap_context_manager(instance.compute_log_manager, "capture_logs", "compute-log capture")
    timer.wrap(PickledObjectFilesystemIOManager, "handle_output", "io manager")
    timer.wrap(PickledObjectFilesystemIOManager, "load_input", "io manager")


def worker(variant: str, home: Path, out: Path, threads: int) -> None:
    """One instrumented Dagster run of the lifecycle; writes buckets as JSON to `out`."""
    import importlib

    for module in lo.WARM_MODULES:
        importlib.import_module(module)
    if threads:
        import torch

        torch.set_num_threads(threads)
    from unified_assets.lifecycle import run_lifecycle
    from unified_assets.settings import Settings

    settings = Settings(deployment="local", home=home, dataset_spec=None)
    lo.warm_mlflow(settings)
    instance = make_instance(variant, home)
    timer = SelfTimer()
    instrument(timer, instance)
    host_before, own_before = lo.host_busy_seconds(), lo.own_cpu_seconds()
    with timer.span("other"):
        run_lifecycle(settings, instance)
    cpu = lo.own_cpu_seconds() - own_before
    out.write_text(json.dumps({
        "variant": variant, "seconds": sum(timer.seconds.values()), "cpu_s": cpu,
        "other_cpu_s": max(0.0, lo.host_busy_seconds() - host_before - cpu),
        "buckets": timer.seconds, "bucket_cpu": timer.cpu, "calls": timer.calls,
        "detail": timer.detail,
    }))


def run_variant(variant: str, landing_cache: Path, scratch: Path, index: int, threads: int
                ) -> dict[str, Any]:
    """Fresh home, fresh worker process, same environment rules as lifecycle_overhead.py."""
    home = scratch / f"{variant}-{index}"
    shutil.copytree(landing_cache, home / "landing")
    out = home / "result.json"
    env = lo.worker_env(home, threads)
    with open(home / "worker.log", "w") as log:
        done = subprocess.run(
            [sys.executable, str(Path(__file__).resolve()), "--worker", variant,
             "--home", str(home), "--out", str(out), "--threads", str(threads)],
            cwd=lo.PROJECT_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, check=False,
        )
    if done.returncode:
        tail = (home / "worker.log").read_text().splitlines()[-25:]
        raise SystemExit(f"worker {variant} failed ({done.returncode}):\n" + "\n".join(tail))
    return json.loads(out.read_text())


def main() -> None:
    """Run the variants interleaved and print the median self-time per bucket."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=8)
    parser.add_argument("--rows", type=int, default=5000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--top", type=int, default=20, help="detail lines to print")
    parser.add_argument("--variants", default=",".join(VARIANTS),
                        help=f"comma-separated subset of {','.join(VARIANTS)}")
    parser.add_argument("--worker", choices=VARIANTS, help=argparse.SUPPRESS)
    parser.add_argument("--home", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.home, args.out, args.threads)
        return
    variants = [v for v in args.variants.split(",") if v]
    unknown = set(variants) - set(VARIANTS)
    if unknown:
        parser.error(f"unknown variants {sorted(unknown)}")

    from unified_assets.ml.generator import write_batches

    scratch = Path(tempfile.mkdtemp(prefix="unified-ai-breakdown-"))
    try:
        landing_cache = scratch / "landing-cache"
        write_batches(landing_cache, args.batches, args.rows, seed=args.seed)
        results: dict[str, list[dict[str, Any]]] = {v: [] for v in variants}
        for index in range(args.repeats):
            for variant in variants:
                record = run_variant(variant, landing_cache, scratch, index, args.threads)
                results[variant].append(record)
                print(f"  run {index + 1}/{args.repeats} {variant:<20} {record['seconds']:6.2f} s",
                      file=sys.stderr, flush=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    print(lo.machine())
    print(f"data: {args.batches} batches x {args.rows} rows; repeats {args.repeats}; "
          f"threads {args.threads or 'library defaults'}; median self-seconds per bucket")
    width = 13
    print(f"{'bucket':<22}" + "".join(f"{v[:width]:>{width + 1}}" for v in variants)
          + f"{'calls':>8}")
    print("-" * (22 + (width + 1) * len(variants) + 8))

    def med(variant: str, key: str) -> float:
        return statistics.median(r["buckets"].get(key, 0.0) for r in results[variant])

    first = variants[0]
    for bucket in BUCKETS:
        calls = results[first][0]["calls"].get(bucket, 0)
        print(f"{bucket:<22}" + "".join(f"{med(v, bucket):>{width + 1}.3f}" for v in variants)
              + f"{calls:>8}")
    print("\nmain-thread CPU self-seconds per bucket (wall minus this = waiting: disk sync, "
          "other processes)")
    for bucket in BUCKETS:
        print(f"{bucket:<22}" + "".join(
            f"{statistics.median(r['bucket_cpu'].get(bucket, 0.0) for r in results[v]):>{width + 1}.3f}"
            for v in variants))
    print()
    for key, label in (("seconds", "TOTAL (timed)"), ("cpu_s", "own CPU"),
                       ("other_cpu_s", "other processes' CPU")):
        print(f"{label:<22}" + "".join(
            f"{statistics.median(r[key] for r in results[v]):>{width + 1}.3f}" for v in variants))
    print(f"\nlargest single items, {first} (run 1): calls, self-seconds")
    detail = sorted(results[first][0]["detail"].items(), key=lambda kv: -kv[1][1])
    for what, (calls, seconds) in detail[:args.top]:
        print(f"  {seconds:8.3f} s {calls:6d}x  {what}")
    overhead = {v: statistics.median(r["seconds"] - r["buckets"].get("asset bodies", 0.0)
                                     for r in results[v]) for v in variants}
    print(f"{'TOTAL - asset bodies':<22}" + "".join(f"{overhead[v]:>{width + 1}.3f}"
                                                    for v in variants))


if __name__ == "__main__":
    main()
