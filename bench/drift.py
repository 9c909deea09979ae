"""Drift decision from column profiles against Evidently 0.7's DataDriftPreset, same data.

Reference and current frames (numeric + categorical columns, a known subset drifted by
known amounts) are generated from a seed, so every subprocess rebuilds identical data.
Each measurement runs in its own fresh interpreter: the data is generated, the peak-RSS
counter is reset (`/proc/self/clear_refs` = 5), then the measured phase runs and reports
wall time and peak RSS above the resident size before the phase ("peak MB above start";
children run with a fixed glibc mmap threshold so freed arrays leave RSS and cannot hide
the phase's own allocations) and the process's absolute peak RSS (data included).
Our decision is timed `--repeat` times in the same process (median reported, first run
included in the median); Evidently once (it is slow).

* ours: `build_reference_profile` on the reference frame (done once per model, at training /
  ingestion, reported apart), then the decision: `profile_batch` of the current frame and
  `compute_drift` against the reference profile, timed separately and together.
* evidently: `Report([DataDriftPreset()], include_tests=True).run(...)` on the raw frames,
  plus reading its per-column verdicts (the Evidently import is timed apart).

Evidently is first run on a subsample (100k rows); larger sizes (300k, then the full size)
are only attempted while the linear extrapolation of its last measured time stays within
`--evidently-budget` seconds. Ours is measured at every size Evidently ran and at the full
size. The speedup and the verdict agreement are taken at the largest size both ran.

Usage: python bench/drift.py --rows 1000000 --cols 50 [--evidently-budget 180]
Last line: `drift_speedup=<evidently s / our decision s> agreement=<share of equal column verdicts>`.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

PROJECT_ROOT = Path(__file__).resolve().parent.parent
if str(PROJECT_ROOT) not in sys.path:
    sys.path.insert(0, str(PROJECT_ROOT))

NUMERIC_KINDS = ("normal", "lognormal", "exponential", "poisson", "uniform", "binary", "gamma", "rounded")
# Drift applied to column i (cycled): 0 = none; otherwise a shift/scale of that strength.
# Chosen away from the 0.1 threshold so that the verdicts measure the method, not sampling luck.
DRIFT_LEVELS = (0.0, 0.0, 0.3, 0.0, 0.04, 0.0, 1.0, 0.0, 0.18, 0.0, 0.0, 0.6)
SUBSAMPLES = (100_000, 300_000)


def column_names(cols: int) -> tuple[list[str], list[str]]:
    categorical = max(1, cols // 5)
    numeric = cols - categorical
    return [f"num_{i:02d}" for i in range(numeric)], [f"cat_{i:02d}" for i in range(categorical)]


def make_data(rows: int, cols: int, seed: int) -> tuple[pd.DataFrame, pd.DataFrame, list[str], list[str]]:
    """(reference, current, numeric, categorical); ~40% of the columns drift by a known amount."""
    numeric, categorical = column_names(cols)
    reference, current = {}, {}
    for i, name in enumerate(numeric):
        level = DRIFT_LEVELS[i % len(DRIFT_LEVELS)]
        kind = NUMERIC_KINDS[i % len(NUMERIC_KINDS)]
        ref_rng = np.random.default_rng([seed, 0, i])
        cur_rng = np.random.default_rng([seed, 1, i])
        reference[name] = _numeric(ref_rng, kind, rows, 0.0)
        current[name] = _numeric(cur_rng, kind, rows, level)
    for j, name in enumerate(categorical):
        level = DRIFT_LEVELS[(j * 5 + 2) % len(DRIFT_LEVELS)]
        size = 4 + 3 * (j % 6)
        labels = np.array([f"{name}_v{k}" for k in range(size)], dtype=object)
        weights = 1.0 / np.arange(1, size + 1)
        moved = weights * np.exp(level * np.linspace(-1.5, 1.5, size))
        reference[name] = np.random.default_rng([seed, 2, j]).choice(labels, rows, p=weights / weights.sum())
        current[name] = np.random.default_rng([seed, 3, j]).choice(labels, rows, p=moved / moved.sum())
    return pd.DataFrame(reference), pd.DataFrame(current), numeric, categorical


def _numeric(rng: np.random.Generator, kind: str, rows: int, level: float) -> np.ndarray:
    if kind == "normal":
        return rng.normal(level, 1.0, rows)
    if kind == "lognormal":
        return rng.lognormal(0.5 * level, 1.0, rows)
    if kind == "exponential":
        return rng.exponential(1.0 + level, rows)
    if kind == "poisson":
        return rng.poisson(3.0 * (1.0 + level), rows).astype(np.float64)
    if kind == "uniform":
        return rng.uniform(0.0, 1.0 + level, rows)
    if kind == "binary":
        return (rng.random(rows) < 0.2 * (1.0 + level)).astype(np.float64)
    if kind == "gamma":
        return rng.gamma(2.0, 1.0 + level, rows)
    return np.round(rng.normal(50.0 + 5 * level, 5.0, rows), 1)  # "rounded"


# ---------------------------------------------------------------- measured phases (children)


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def _start_memory() -> int:
    gc.collect()
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM (peak RSS) to the current RSS
    return _status_kb("VmRSS")


def _peak_mb(baseline_kb: int) -> float:
    return (_status_kb("VmHWM") - baseline_kb) / 1024


def _process_peak_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def phase_ours(rows: int, cols: int, seed: int, workers: int | None, repeat: int) -> dict:
    from unified_assets.ml.drift import compute_drift
    from unified_assets.ml.profiles import build_reference_profile, profile_batch, profile_size_bytes

    ref, cur, numeric, categorical = make_data(rows, cols, seed)
    started = time.perf_counter()
    reference = build_reference_profile(ref, numeric, categorical, workers=workers)
    reference_s = time.perf_counter() - started
    del ref
    baseline = _start_memory()
    timings = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        current = profile_batch(cur, reference, workers=workers)
        t1 = time.perf_counter()
        result = compute_drift(reference, current)
        t2 = time.perf_counter()
        timings.append((t1 - t0, t2 - t1, t2 - t0))
    peak = _peak_mb(baseline)
    profile_s, decide_s, total_s = (float(np.median([t[i] for t in timings])) for i in range(3))
    return {
        "tool": "ours", "rows": rows, "cols": cols, "repeat": repeat,
        "reference_profile_s": reference_s, "profile_s": profile_s, "decide_s": decide_s, "total_s": total_s,
        "total_runs_s": [t[2] for t in timings],
        "peak_mb": peak, "process_peak_mb": _process_peak_mb(),
        "reference_bytes": profile_size_bytes(reference), "current_bytes": profile_size_bytes(current),
        "result": result.to_dict(),
    }


def phase_evidently(rows: int, cols: int, seed: int) -> dict:
    ref, cur, numeric, categorical = make_data(rows, cols, seed)
    started = time.perf_counter()
    import evidently  # noqa: F401
    from evidently.presets import DataDriftPreset  # noqa: F401

    from unified_assets.ml.evidently_report import evidently_verdicts

    import_s = time.perf_counter() - started
    baseline = _start_memory()
    t0 = time.perf_counter()
    result = evidently_verdicts(ref, cur, numeric, categorical)
    total = time.perf_counter() - t0
    return {
        "tool": "evidently", "rows": rows, "cols": cols, "import_s": import_s, "total_s": total,
        "peak_mb": _peak_mb(baseline), "process_peak_mb": _process_peak_mb(), "result": result.to_dict(),
    }


# ---------------------------------------------------------------- driver (parent)


def run_child(
    phase: str, rows: int, cols: int, seed: int, workers: int | None, timeout: float, repeat: int = 1
) -> dict | None:
    command = [sys.executable, str(Path(__file__).resolve()), "--phase", phase, "--rows", str(rows),
               "--cols", str(cols), "--seed", str(seed), "--repeat", str(repeat)]
    if workers:
        command += ["--workers", str(workers)]
    # A fixed mmap threshold turns off glibc's dynamic one: large arrays are mmapped and
    # returned on free, so RSS before a phase does not include reusable freed memory.
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072", "MALLOC_TRIM_THRESHOLD_": "131072"}
    started = time.perf_counter()
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=True,
                              cwd=PROJECT_ROOT, env=env)
    except subprocess.TimeoutExpired:
        print(f"  {phase} at {rows:,} rows: killed after {timeout:.0f} s", flush=True)
        return None
    except subprocess.CalledProcessError as error:
        print(f"  {phase} at {rows:,} rows failed:\n{error.stderr[-3000:]}", flush=True)
        return None
    out = json.loads(done.stdout.strip().splitlines()[-1])
    out["process_s"] = time.perf_counter() - started
    print(f"  measured {phase:9s} {rows:>9,} rows: {out['total_s']:8.2f} s, peak +{out['peak_mb']:,.1f} MB "
          f"(process peak RSS {out['process_peak_mb']:,.0f} MB)", flush=True)
    return out


def machine() -> str:
    cpu = platform.processor() or "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = os.getloadavg() if hasattr(os, "getloadavg") else ("?",) * 3
    return (f"machine: nproc={os.cpu_count()} cpu={cpu!r} python={platform.python_version()} "
            f"numpy={np.__version__} pandas={pd.__version__} load_avg={tuple(round(x, 2) for x in load)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--cols", type=int, default=50)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--workers", type=int, default=None,
                        help="threads for profiling (default: min(4, cpus))")
    parser.add_argument("--evidently-budget", type=float, default=180.0,
                        help="largest extrapolated Evidently run time (s) to attempt")
    parser.add_argument("--repeat", type=int, default=3, help="timed repetitions of our decision")
    parser.add_argument("--phase", choices=["ours", "evidently"], help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.phase == "ours":
        print(json.dumps(phase_ours(args.rows, args.cols, args.seed, args.workers, args.repeat)))
        return
    if args.phase == "evidently":
        print(json.dumps(phase_evidently(args.rows, args.cols, args.seed)))
        return

    print(machine())
    numeric, categorical = column_names(args.cols)
    print(f"data: {args.rows:,} rows x {args.cols} columns ({len(numeric)} numeric, {len(categorical)} "
          f"categorical) for reference and for current; seed {args.seed}", flush=True)

    evidently_runs: dict[int, dict] = {}
    sizes = sorted({s for s in SUBSAMPLES if s < args.rows} | {args.rows})
    last: tuple[int, float] | None = None
    for size in sizes:
        if last is not None:
            predicted = last[1] * size / last[0]
            if predicted > args.evidently_budget:
                print(f"  evidently at {size:,} rows skipped: extrapolated {predicted:.0f} s > budget "
                      f"{args.evidently_budget:.0f} s", flush=True)
                break
        run = run_child("evidently", size, args.cols, args.seed, None, timeout=3 * args.evidently_budget)
        if run is None:
            break
        evidently_runs[size] = run
        last = (size, run["total_s"])

    ours_runs: dict[int, dict] = {}
    for size in sorted(set(evidently_runs) | {args.rows}):
        run = run_child("ours", size, args.cols, args.seed, args.workers, timeout=1800, repeat=args.repeat)
        if run is None:
            raise SystemExit("our decision failed")
        ours_runs[size] = run

    print()
    print("| rows x cols | tool | reference profile s | profile current s | decision | "
          "profile+decision s | Evidently run s | peak MB above start | process peak RSS MB | drifted cols | "
          "dataset drift |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for size in sorted(set(ours_runs) | set(evidently_runs)):
        for tool, run in (("ours", ours_runs.get(size)), ("evidently", evidently_runs.get(size))):
            if run is None:
                continue
            result = run["result"]
            if tool == "ours":
                cells = (f"{run['reference_profile_s']:.2f}", f"{run['profile_s']:.2f}",
                         f"{run['decide_s'] * 1000:.1f} ms", f"{run['total_s']:.2f}", "-")
            else:
                cells = ("-", "-", "-", "-", f"{run['total_s']:.2f}")
            drifted = f"{result['number_of_drifted_columns']}/{result['number_of_columns']}"
            memory = f"{run['peak_mb']:,.1f} | {run['process_peak_mb']:,.0f}"
            print(f"| {size:,} x {args.cols} | {tool} | " + " | ".join(cells) +
                  f" | {memory} | {drifted} | {result['dataset_drift']} |")
    if evidently_runs:
        first = next(iter(evidently_runs.values()))
        print(f"\nEvidently import (not in its run time): {first['import_s']:.1f} s")
    full = ours_runs[args.rows]
    print(f"ours: median of {full['repeat']} runs; profile+decision runs at {args.rows:,} rows: "
          + ", ".join(f"{t:.2f}" for t in full["total_runs_s"]) + " s")
    print(f"profile sizes at {args.rows:,} rows: reference {full['reference_bytes'] / 1024:.1f} KB, "
          f"current {full['current_bytes'] / 1024:.1f} KB (compact JSON)")

    if not evidently_runs:
        print("Evidently did not finish any size: no comparison")
        print("drift_speedup=nan agreement=nan")
        return
    compared = max(evidently_runs)
    ours, theirs = ours_runs[compared]["result"], evidently_runs[compared]["result"]
    mine = {c["column"]: c for c in ours["columns"]}
    print(f"\nper-column verdicts at {compared:,} rows x {args.cols} (ours vs Evidently):")
    print("| column | statistic | ours | Evidently | abs diff | ours drift | Evidently drift |")
    print("|---|---|---:|---:|---:|---|---|")
    agree = 0
    worst = 0.0
    for c in theirs["columns"]:
        m = mine[c["column"]]
        diff = abs(m["value"] - c["value"])
        worst = max(worst, diff) if c["stattest"] == "wasserstein" else worst
        agree += m["drifted"] == c["drifted"]
        mark = "" if m["drifted"] == c["drifted"] else " <- differs"
        print(f"| {c['column']} | {c['statistic']} | {m['value']:.5f} | {c['value']:.5f} | {diff:.1e} | "
              f"{m['drifted']} | {c['drifted']}{mark} |")
    agreement = agree / len(theirs["columns"])
    speedup = evidently_runs[compared]["total_s"] / ours_runs[compared]["total_s"]
    cold = evidently_runs[compared]["total_s"] / (
        ours_runs[compared]["total_s"] + ours_runs[compared]["reference_profile_s"]
    )
    print(f"\nlargest Wasserstein |ours - Evidently|: {worst:.2e}")
    if compared < args.rows:
        print(f"Evidently ran up to {compared:,} rows (next size over budget); the speedup is measured at "
              f"{compared:,} rows, where both ran. Ours at {args.rows:,} rows: "
              f"{full['total_s']:.2f} s (profile {full['profile_s']:.2f} s + decision "
              f"{full['decide_s'] * 1000:.1f} ms).")
        sizes_run = sorted(evidently_runs)
        if len(sizes_run) >= 2:
            a, b = sizes_run[-2], sizes_run[-1]
            slope = (evidently_runs[b]["total_s"] - evidently_runs[a]["total_s"]) / (b - a)
            estimate = evidently_runs[b]["total_s"] + slope * (args.rows - b)
            print(f"Evidently at {args.rows:,} rows, linear extrapolation (not measured): ~{estimate:.0f} s, "
                  f"i.e. ~{estimate / full['total_s']:.0f}x our measured {full['total_s']:.2f} s")
    print(f"speedup at {compared:,} rows: decision {speedup:.1f}x; including building the reference "
          f"profile from rows (which ours does once per model, not per check): {cold:.1f}x")
    print(f"drift_speedup={speedup:.1f} agreement={agreement:.3f}")


if __name__ == "__main__":
    main()
