"""Load time of the code location (import, then build its Definitions, as Dagster does
when it loads a code location) against a bare `import dagster`.

Each sample is a fresh interpreter (`python -c ...`) that times one import with
`time.perf_counter()` around it, so interpreter start-up is excluded from the import
figure (the subprocess wall time is shown beside it). The two targets are interleaved
(dagster, code location, dagster, ...) so drift in machine load hits both alike, and
the minimum of each is compared: the minimum is the least noisy estimate of the cost.

Usage: python bench/load_time.py [--runs 7]
The last line printed is `load_ratio=<min(code location)/min(dagster)>`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent

TARGETS: dict[str, str] = {
    "dagster": "dagster",
    "code location": "unified_assets.definitions",
}

# The definitions are built lazily (`@dg.definitions`): importing the module builds nothing,
# so the probe also calls the loader when the module has one, which is the cost a daemon,
# webserver or run worker pays on load.
PROBE = (
    "import json, time, importlib\n"
    "started = time.perf_counter()\n"
    "module = importlib.import_module({module!r})\n"
    "loader = getattr(module, 'defs', None)\n"
    "if callable(loader): loader()\n"
    "print(json.dumps({{'import_s': time.perf_counter() - started}}))\n"
)


def machine() -> str:
    """One line describing the host and interpreter."""
    return (
        f"machine: cpus={os.cpu_count()} platform={platform.platform()} "
        f"python={platform.python_version()} ({sys.executable})"
    )


def sample(module: str, env: dict[str, str]) -> tuple[float, float]:
    """Import `module` in a fresh interpreter: (import seconds, subprocess wall seconds)."""
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", PROBE.format(module=module)],
        cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, check=True,
    )
    wall = time.perf_counter() - started
    return float(json.loads(done.stdout.strip().splitlines()[-1])["import_s"]), wall


def main() -> None:
    """Interleave the targets, print a table and the final `load_ratio=` line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7, help="samples per target (default 7)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="unified-ai-load-") as home:
        env = os.environ | {"UNIFIED_AI_HOME": home}
        env.pop("UNIFIED_AI_DEPLOYMENT", None)
        env.pop("UNIFIED_AI_DATASET_SPEC", None)
        # One untimed import of each target first, so .pyc files exist for both.
        for module in TARGETS.values():
            sample(module, env)
        imports: dict[str, list[float]] = {name: [] for name in TARGETS}
        walls: dict[str, list[float]] = {name: [] for name in TARGETS}
        for _ in range(args.runs):
            for name, module in TARGETS.items():
                seconds, wall = sample(module, env)
                imports[name].append(seconds)
                walls[name].append(wall)

    print(machine())
    print(f"runs per target: {args.runs} (interleaved, fresh interpreter each)")
    print()
    header = f"{'target':<15} {'module':<28} {'min s':>7} {'median s':>9} {'max s':>7} {'wall min s':>11}"
    print(header)
    print("-" * len(header))
    for name, module in TARGETS.items():
        values = imports[name]
        print(
            f"{name:<15} {module:<28} {min(values):>7.3f} {statistics.median(values):>9.3f} "
            f"{max(values):>7.3f} {min(walls[name]):>11.3f}"
        )
    extra = min(imports["code location"]) - min(imports["dagster"])
    print(f"\ncode location on top of dagster (min): {extra:+.3f} s")
    ratio = min(imports["code location"]) / min(imports["dagster"])
    print(f"load_ratio={ratio:.3f}")


if __name__ == "__main__":
    main()
