"""Wall time of the README's test command (its pytest part) for two commits side by side on
this machine: the old commit (`--base`, default 3cf31f9, before the suite was sped up) and
the new one (`--new`, default HEAD).

Each commit is checked out in its own temporary git worktree and tested from there with
this project's venv (`python -m pytest -q -p no:cacheprovider tests/`, with the commit's own
pytest options from its pyproject.toml): running from the worktree puts it first on
sys.path, so its code and tests are the ones imported, not the editable install's. The two
runs are sequential (never concurrent), old first; the worktrees are removed afterwards.

Usage: python bench/test_time.py [--base 3cf31f9] [--new HEAD] [--python .venv/bin/python]
                                 [--pytest-args "tests/unified_assets/test_queues.py"]
The last line printed is `test_time_ratio=<new wall seconds / old wall seconds>`.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import shlex
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_BASE = "3cf31f9"
PYTEST = ["-m", "pytest", "-q", "-p", "no:cacheprovider"]
# Variables of a surrounding test run or of a configured local state must not reach the runs.
DROPPED_ENV_PREFIXES = ("PYTEST_", "DAGSTER_", "UNIFIED_AI_")


@dataclass
class Outcome:
    label: str
    commit: str
    wall_s: float
    counts: dict[str, int]
    returncode: int
    tail: str


def git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=PROJECT_ROOT, capture_output=True, text=True,
                          check=True).stdout.strip()


def counts_of(output: str) -> dict[str, int]:
    """pytest's closing line (`640 passed, 2 failed, 21 warnings in 986.1s`) as numbers."""
    summary = [line for line in output.splitlines()
               if re.search(r"\d+ (passed|failed|error)", line)]
    found = re.findall(r"(\d+) (passed|failed|errors?|skipped|xfailed|xpassed)",
                       summary[-1] if summary else "")
    return {("errors" if kind == "error" else kind): int(n) for n, kind in found}


def run_commit(label: str, commit: str, python: str, pytest_args: list[str],
               scratch: Path) -> Outcome:
    sha = git("rev-parse", "--verify", f"{commit}^{{commit}}")
    tree = scratch / label
    git("worktree", "add", "--detach", str(tree), sha)
    try:
        env = {k: v for k, v in os.environ.items() if not k.startswith(DROPPED_ENV_PREFIXES)}
        # A fresh pytest basetemp per run, so one run's leftovers never meet the other's.
        command = [python, *PYTEST, f"--basetemp={scratch / (label + '-tmp')}", *pytest_args]
        print(f"{label}: {sha[:10]} in {tree}: {shlex.join(command)}", flush=True)
        started = time.perf_counter()
        done = subprocess.run(command, cwd=tree, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - started
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=PROJECT_ROOT,
                       capture_output=True)
    output = done.stdout + done.stderr
    return Outcome(label, sha, wall, counts_of(output), done.returncode,
                   "\n".join(output.strip().splitlines()[-3:]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", default=DEFAULT_BASE, help="the old commit (default %(default)s)")
    parser.add_argument("--new", default="HEAD", help="the new commit (default %(default)s)")
    default_python = PROJECT_ROOT / ".venv" / "bin" / "python"
    parser.add_argument("--python", default=str(default_python if default_python.exists()
                                                else sys.executable),
                        help="the interpreter of the venv to test with (default: .venv)")
    parser.add_argument("--pytest-args", default="tests/",
                        help="what to run, as on a command line (default: %(default)s)")
    args = parser.parse_args(argv)
    pytest_args = shlex.split(args.pytest_args)

    print(f"machine: cpus={os.cpu_count()} platform={platform.platform()} "
          f"python={platform.python_version()} load={os.getloadavg()[0]:.2f}", flush=True)
    outcomes = []
    with tempfile.TemporaryDirectory(prefix="unified-ai-test-time-") as folder:
        for label, commit in (("old", args.base), ("new", args.new)):
            outcome = run_commit(label, commit, args.python, pytest_args, Path(folder))
            outcomes.append(outcome)
            counts = ", ".join(f"{n} {kind}" for kind, n in sorted(outcome.counts.items()))
            print(f"{label}: {outcome.commit[:10]} wall={outcome.wall_s:.1f}s "
                  f"passed={outcome.counts.get('passed', 0)} ({counts or 'no summary'}; "
                  f"exit {outcome.returncode})", flush=True)
            if outcome.returncode != 0:
                print(f"{label}: pytest's last lines:\n{outcome.tail}", flush=True)
    old, new = outcomes
    print(f"old_wall_s={old.wall_s:.1f} new_wall_s={new.wall_s:.1f} "
          f"old_passed={old.counts.get('passed', 0)} new_passed={new.counts.get('passed', 0)}")
    print(f"test_time_ratio={new.wall_s / old.wall_s:.3f}")
    return 0 if old.returncode == 0 and new.returncode == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
