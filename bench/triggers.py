"""Retraining on every batch vs retraining when the profile drift decision says so.

A stream of payment batches (`unified_assets.ml.generator`) with drift injected at known
points: batches [0, 20) as generated, [20, 40) with DriftSpec A, [40, N) with DriftSpec B.
Every strategy starts from the same model trained on batches [0, W) and scores every later
batch t with the model in production *before* seeing t (live ROC AUC); then

* every batch: retrain on batches [t - W + 1, t] after every batch;
* triggered: profile batch t against the production model's reference profile (the profile
  of its training rows, `build_reference_profile`, made when it was trained) and retrain on
  [t - W + 1, t] only when `compute_drift(...).dataset_drift` is true. A retrained model
  brings its own reference, so a retrain answers one piece of evidence. With a cooldown of
  C batches, drift decisions in the C batches after a retrain are recorded but retrain
  nothing: with C = W the next retrain can only come from a window made entirely of data
  seen after the evidence, instead of re-acting to the same change point while the window
  slides over it one batch at a time;
* never: the initial model throughout (context: what retraining buys at all).

No strategy retrains after the last batch (nothing is left to score). Training compute is
`time.process_time()` around `train_sklearn` only, default `SklearnParams`; the initial
model counts for every strategy. BLAS/OpenMP run with `--threads` threads (default 1, via
threadpoolctl): with several OpenMP threads on a loaded machine, spin-waiting inflated CPU
seconds (an initial fit measured 29 CPU-s against ~5 for the others): noise, not training
work. sklearn is imported before any timing. Training is deterministic, so
each distinct window is trained once and its measured cost is charged to every strategy
that trains it. Profiling and drift checks are timed apart. Per-column thresholds are
Evidently's defaults (W and JS 0.1); the dataset-level share of drifted columns and the
cooldown are swept, and the chosen pair (`--drift-share`, `--cooldown`) gives the last line.

Usage: python bench/triggers.py [--batches 72] [--rows 2000] [--window 8] [--drift-share 0.3]
                                [--cooldown 8]
Last line: `compute_ratio=<every-batch CPU / triggered CPU> auc_delta=<mean AUC every - triggered>`.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

PROJECT_ROOT = Path(__file__).resolve().parent.parent
if str(PROJECT_ROOT) not in sys.path:
    sys.path.insert(0, str(PROJECT_ROOT))

from unified_assets.ml.batch_validation import curated  # noqa: E402
from unified_assets.ml.dataset_spec import payments_spec  # noqa: E402
from unified_assets.ml.drift import compute_drift  # noqa: E402
from unified_assets.ml.generator import DriftSpec, batch_name, generate_batch  # noqa: E402
from unified_assets.ml.metrics import binary_metrics  # noqa: E402
from unified_assets.ml.profiles import build_reference_profile, profile_batch  # noqa: E402
from unified_assets.ml.sklearn_model import SklearnParams, train_sklearn  # noqa: E402

SPEC = payments_spec(Path("unused"))
NUMERIC, CATEGORICAL, TARGET = SPEC.numeric_features, SPEC.categorical_features, SPEC.target
DRIFT_A = DriftSpec(start_batch=20, covariate_shift=0.6, label_shift=0.5)
DRIFT_B = DriftSpec(start_batch=40, covariate_shift=1.5, label_shift=-0.5)


def make_stream(batches: int, rows: int, seed: int) -> list[pd.DataFrame]:
    """Curated batches; each segment generated with its own DriftSpec."""
    stream = []
    for index in range(batches):
        spec = DRIFT_B if DRIFT_B.active(index) else DRIFT_A if DRIFT_A.active(index) else None
        frame = generate_batch(index, rows, seed=seed, drift=spec)
        stream.append(curated(frame, SPEC, batch_name(index)))
    return stream


def segment(index: int) -> str:
    return "B" if DRIFT_B.active(index) else "A" if DRIFT_A.active(index) else "none"


@dataclass
class Run:
    name: str
    retrained_at: list[int] = field(default_factory=list)
    train_cpu_s: float = 0.0
    train_wall_s: float = 0.0
    check_s: float = 0.0  # profiling at ingestion + drift decisions + reference profiles
    auc: dict[int, float] = field(default_factory=dict)
    shares: dict[int, float] = field(default_factory=dict)

    def mean_auc(self, which: str | None = None) -> float:
        values = [v for t, v in self.auc.items() if which is None or segment(t) == which]
        return float(np.mean(values))


class Trainer:
    """The model for the window ending at batch t, trained once per t (deterministic)."""

    def __init__(self, stream: list[pd.DataFrame], window: int):
        self.stream, self.window = stream, window
        self.cache: dict[int, tuple] = {}

    def __call__(self, run: Run, end: int):
        if end not in self.cache:
            frame = pd.concat(self.stream[max(0, end - self.window + 1): end + 1], ignore_index=True)
            cpu, wall = time.process_time(), time.perf_counter()
            model = train_sklearn(frame, NUMERIC, CATEGORICAL, TARGET, SklearnParams())
            self.cache[end] = (model, frame, time.process_time() - cpu, time.perf_counter() - wall)
        model, frame, cpu, wall = self.cache[end]
        run.train_cpu_s += cpu
        run.train_wall_s += wall
        return model, frame


def live_auc(model, batch: pd.DataFrame) -> float:
    scores = model.predict_proba(batch[CATEGORICAL + NUMERIC])[:, 1]
    value = binary_metrics(batch[TARGET].to_numpy(), scores)["roc_auc"]
    return float("nan") if value is None else value


def simulate(trainer: Trainer, mode: str, drift_share: float = 0.5, cooldown: int = 0) -> Run:
    """mode: "every", "triggered" or "never"."""
    stream, window = trainer.stream, trainer.window
    name = {"every": "every batch", "never": "never (initial model only)"}.get(
        mode, f"triggered: share >= {drift_share:g}, cooldown {cooldown}"
    )
    run = Run(name)
    model, frame = trainer(run, window - 1)
    started = time.perf_counter()
    reference = build_reference_profile(frame, NUMERIC, CATEGORICAL) if mode == "triggered" else None
    run.check_s += time.perf_counter() - started
    last = len(stream) - 1
    quiet_until = -1
    for t in range(window, len(stream)):
        batch = stream[t]
        run.auc[t] = live_auc(model, batch)  # scored before anything learns from batch t
        if mode == "every" and t < last:
            model, _ = trainer(run, t)
            run.retrained_at.append(t)
        elif mode == "triggered":
            started = time.perf_counter()
            decision = compute_drift(reference, profile_batch(batch, reference), drift_share=drift_share)
            run.check_s += time.perf_counter() - started
            run.shares[t] = decision.share_of_drifted_columns
            if decision.dataset_drift and quiet_until < t < last:
                model, frame = trainer(run, t)
                run.retrained_at.append(t)
                quiet_until = t + cooldown
                started = time.perf_counter()
                reference = build_reference_profile(frame, NUMERIC, CATEGORICAL)
                run.check_s += time.perf_counter() - started
    return run


def machine() -> str:
    cpu = "?"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    load = tuple(round(x, 2) for x in os.getloadavg())
    return f"machine: nproc={os.cpu_count()} cpu={cpu!r} python={platform.python_version()} load_avg={load}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=72)
    parser.add_argument("--rows", type=int, default=2000)
    parser.add_argument("--window", type=int, default=8, help="batches per training window (W)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--drift-share", type=float, default=0.3,
                        help="dataset-level share of drifted columns that triggers a retrain")
    parser.add_argument("--cooldown", type=int, default=None, help="batches after a retrain (default: W)")
    parser.add_argument("--threads", type=int, default=1, help="OpenMP/BLAS threads for sklearn")
    parser.add_argument("--sweep", type=float, nargs="*", default=[0.5, 0.3, 0.1],
                        help="shares to report besides the chosen one (0.5 is Evidently's default)")
    args = parser.parse_args()
    if args.batches < 60 or args.batches <= DRIFT_B.start_batch + args.window:
        raise SystemExit("need at least 60 batches and some after the second drift point")
    cooldown = args.window if args.cooldown is None else args.cooldown
    parser_threads = args.threads
    warnings.simplefilter("ignore")
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=parser_threads)
    # train_sklearn imports sklearn inside the function: import it here so that the first
    # (initial) fit is not charged the import.
    import sklearn.compose  # noqa: F401
    import sklearn.ensemble  # noqa: F401
    import sklearn.pipeline  # noqa: F401
    import sklearn.preprocessing  # noqa: F401

    print(machine() + f" training threads={parser_threads}")
    print(f"stream: {args.batches} batches x {args.rows:,} rows, window W={args.window} batches; "
          f"drift A from batch {DRIFT_A.start_batch} ({DRIFT_A}), "
          f"drift B from batch {DRIFT_B.start_batch} ({DRIFT_B})")
    stream = make_stream(args.batches, args.rows, args.seed)
    rates = {seg: np.mean([b[TARGET].mean() for t, b in enumerate(stream) if segment(t) == seg])
             for seg in ("none", "A", "B")}
    print("fraud rate per segment: " + ", ".join(f"{k} {v:.1%}" for k, v in rates.items())
          + f"; live AUC scored on batches {args.window}..{args.batches - 1}", flush=True)

    trainer = Trainer(stream, args.window)
    every = simulate(trainer, "every")
    never = simulate(trainer, "never")
    configs = [(s, c) for s in sorted(set(args.sweep) | {args.drift_share}, reverse=True)
               for c in sorted({0, cooldown})]
    triggered = {config: simulate(trainer, "triggered", *config) for config in configs}
    chosen = triggered[(args.drift_share, cooldown)]

    print(f"\nshare of drifted columns per batch vs the production model's reference ({chosen.name}; "
          "* = retrained after scoring it):")
    for seg in ("none", "A", "B"):
        cells = [f"{t}:{chosen.shares[t]:.2f}{'*' if t in chosen.retrained_at else ''}"
                 for t in sorted(chosen.shares) if segment(t) == seg]
        print(f"  segment {seg:4s} " + " ".join(cells))

    print("\n| strategy | retrains | retrained after batches | training CPU s | training wall s | "
          "checks s | mean live AUC | AUC no drift | AUC drift A | AUC drift B | CPU ratio every/this | "
          "AUC every - this |")
    print("|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for run in [every, *triggered.values(), never]:
        retrained = [str(t) for t in run.retrained_at]
        if run is every:
            retrained = [f"{every.retrained_at[0]}..{every.retrained_at[-1]}"]
        print(f"| {run.name} | {len(run.retrained_at)} | {', '.join(retrained) or '-'} | "
              f"{run.train_cpu_s:.1f} | {run.train_wall_s:.1f} | {run.check_s:.2f} | {run.mean_auc():.4f} | "
              f"{run.mean_auc('none'):.4f} | {run.mean_auc('A'):.4f} | {run.mean_auc('B'):.4f} | "
              f"{every.train_cpu_s / run.train_cpu_s:.2f} | {every.mean_auc() - run.mean_auc():+.4f} |")
    print("(training CPU includes the initial model, trained by every strategy; checks = profiling each "
          "batch, drift decisions and reference profiles, not in training CPU)")
    per_check = 1000 * chosen.check_s / max(len(chosen.shares), 1)
    print(f"drift checks of the chosen run: {per_check:.1f} ms per batch on average "
          "(incl. reference profiles)")
    print(f"chosen: per-column thresholds at Evidently's defaults; retrain when the share of drifted "
          f"columns >= {args.drift_share:g}; cooldown {cooldown} batches")
    ratio = every.train_cpu_s / chosen.train_cpu_s
    delta = every.mean_auc() - chosen.mean_auc()
    print(f"compute_ratio={ratio:.2f} auc_delta={delta:.4f}")


if __name__ == "__main__":
    main()
