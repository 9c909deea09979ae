"""A child forked from the warm server's preload: its first full collection, with the preload
frozen before the fork (as unified_assets/placement/ray_warm.py does) and without.

Each repeat starts two fresh parents side by side (interleaved frozen/unfrozen), each of
which imports what the warm server preloads for training steps (`ray_warm.BASE_PRELOAD` and
`unified_assets.definitions.RAY_PRELOAD`), optionally calls `gc.freeze()`, and forks. The
child reports the seconds of one `gc.collect()` and its private dirty memory before and after
(`/proc/self/smaps_rollup`): a collection that walks the preload writes into every page
holding a tracked object, and copy-on-write makes each such page the child's own.

Usage: python bench/fork_gc.py [--repeats 5]
The last line printed is `fork_gc_seconds_saved=<median unfrozen - median frozen s>
private_mb_saved=<median unfrozen - median frozen MB>` (per child, per full collection).
"""

from __future__ import annotations

import argparse
import gc
import importlib
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def private_dirty_kb() -> int:
    for line in Path("/proc/self/smaps_rollup").read_text().splitlines():
        if line.startswith("Private_Dirty:"):
            return int(line.split()[1])
    raise RuntimeError("no Private_Dirty in /proc/self/smaps_rollup")


def parent(freeze: bool) -> dict:
    """Preload, optionally freeze, fork; return what the child measured."""
    from unified_assets.definitions import RAY_PRELOAD
    from unified_assets.placement.ray_warm import BASE_PRELOAD

    for module in (*BASE_PRELOAD, *RAY_PRELOAD):
        try:
            importlib.import_module(module)
        except ImportError:  # as the server: a module missing from this install is skipped
            continue
    gc.collect()  # the server's own garbage is not what is measured
    tracked = len(gc.get_objects())
    if freeze:
        gc.freeze()
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        before = private_dirty_kb()
        started = time.perf_counter()
        gc.collect()
        seconds = time.perf_counter() - started
        os.write(write, json.dumps({"seconds": seconds, "private_mb": (private_dirty_kb()
                                    - before) / 1024}).encode())
        os._exit(0)
    os.close(write)
    os.waitpid(pid, 0)
    with os.fdopen(read) as pipe:
        return {"freeze": freeze, "tracked": tracked, **json.loads(pipe.read())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="parents per side (default 5)")
    parser.add_argument("--parent", choices=("frozen", "unfrozen"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.parent:
        print(json.dumps(parent(args.parent == "frozen")))
        return
    results: dict[str, list[dict]] = {"unfrozen": [], "frozen": []}
    for index in range(args.repeats):
        for side in results:
            done = subprocess.run([sys.executable, __file__, "--parent", side], cwd=PROJECT_ROOT,
                                  capture_output=True, text=True, check=True)
            results[side].append(json.loads(done.stdout.strip().splitlines()[-1]))
            row = results[side][-1]
            print(f"  {index + 1}/{args.repeats} {side:<8} collect {row['seconds']:.3f} s, "
                  f"private +{row['private_mb']:.0f} MB ({row['tracked']} objects preloaded)",
                  file=sys.stderr, flush=True)
    print(f"machine: cpus={os.cpu_count()} platform={platform.platform()} "
          f"python={platform.python_version()}")
    median = {side: {key: statistics.median(r[key] for r in rows)
                     for key in ("seconds", "private_mb", "tracked")}
              for side, rows in results.items()}
    for side, row in median.items():
        print(f"{side:<8} median: one full collection in the child {row['seconds']:.3f} s, "
              f"private memory +{row['private_mb']:.0f} MB, {row['tracked']:.0f} objects preloaded")
    seconds = median["unfrozen"]["seconds"] - median["frozen"]["seconds"]
    saved = median["unfrozen"]["private_mb"] - median["frozen"]["private_mb"]
    print(f"fork_gc_seconds_saved={seconds:.3f} private_mb_saved={saved:.0f}")


if __name__ == "__main__":
    main()
