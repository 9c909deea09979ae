"""What one Dagster event write costs on this disk, as Dagster's SQLite storage makes it (a
new connection per write, closed after, in WAL mode), and with the two settings of
`unified_assets/instance_sqlite.py`, side by side in one run.

    .venv/bin/python bench/instance_sqlite.py [--writes 200] [--rounds 3]

Each variant does `--writes` times: connect, insert one 500-byte row, commit, close, on its
own fresh WAL file; the variants alternate for `--rounds` rounds and the median per write is
printed. Last line: `untuned_ms=<a> held_ms=<b> tuned_ms=<c> speedup=<a / c>`.
"""

from __future__ import annotations

import argparse
import platform
import sqlite3
import statistics
import tempfile
import time
from pathlib import Path

VARIANTS = ("untuned", "held", "tuned")  # Dagster's way; a connection held; held + NORMAL


def per_write_ms(folder: Path, variant: str, writes: int) -> float:
    path = folder / f"{variant}-{time.monotonic_ns()}.db"
    with sqlite3.connect(path) as setup:
        setup.execute("PRAGMA journal_mode=WAL")
        setup.execute("CREATE TABLE t (x TEXT)")
    keeper = None
    if variant != "untuned":
        keeper = sqlite3.connect(path)
        keeper.execute("SELECT count(*) FROM sqlite_master").fetchone()
    started = time.perf_counter()
    for _ in range(writes):
        connection = sqlite3.connect(path)
        if variant == "tuned":
            connection.execute("PRAGMA synchronous=NORMAL")
        connection.execute("INSERT INTO t VALUES (?)", ("x" * 500,))
        connection.commit()
        connection.close()
    seconds = time.perf_counter() - started
    if keeper is not None:
        keeper.close()
    return seconds / writes * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--writes", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    results: dict[str, list[float]] = {v: [] for v in VARIANTS}
    with tempfile.TemporaryDirectory(prefix="uai-sqlite-bench-") as folder:
        for _ in range(args.rounds):
            for variant in VARIANTS:
                results[variant].append(per_write_ms(Path(folder), variant, args.writes))
    print(f"machine: {platform.platform()} sqlite {sqlite3.sqlite_version}; {args.writes} writes "
          f"x {args.rounds} rounds per variant, alternating; temp dir {tempfile.gettempdir()}")
    for variant in VARIANTS:
        print(f"{variant:8s} " + " ".join(f"{ms:6.2f}" for ms in results[variant]) + " ms/write")
    median = {v: statistics.median(results[v]) for v in VARIANTS}
    print(f"untuned_ms={median['untuned']:.3f} held_ms={median['held']:.3f} "
          f"tuned_ms={median['tuned']:.3f} speedup={median['untuned'] / median['tuned']:.1f}")


if __name__ == "__main__":
    main()
