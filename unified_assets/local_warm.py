"""Warm local run processes and forkservers under `scripts/dev.sh` (`UNIFIED_AI_LOCAL_WARM=on`).

Every local run starts two fresh interpreters before its first step: the code server spawns
the run's process (`multiprocessing` spawn: Python, Dagster, the code location), and the
training run's multiprocess executor starts a forkserver that imports MLflow, scikit-learn
and torch (TRAINING_PRELOAD) before it forks a step: 5.9-9 s on one core while the other
idles, after the drift decision (bench/RESULTS.md, "Warm local processes"). Here Python's
multiprocessing starts both through `placement/ray_warm.py`'s client
(`multiprocessing.set_executable`, a documented hook): the run process or forkserver is
forked from a warm server that imported those libraries once, starting when the code
location was first loaded. A run process is served as soon as the server has imported Dagster
(the server imports the rest between requests; the first run under scripts/dev.sh came while
torch was still loading, and started cold: 2.4 s to its first step instead of 0.4 s); a
forkserver waits for the whole preload. The code location itself is still imported fresh by
each of them.

The server's safety rules are ray_warm's: same Python, folder and environment or no service,
a changed library file retires it, its socket is this user's only, it exits when idle. Any
failure on the way runs the process as Python would have (a fresh interpreter). Only
multiprocessing's own start commands are served, never anything else Python is asked to run.

Opt-in (`scripts/dev.sh` turns it on), because it starts a detached process holding about
0.6 GB while it lives (UNIFIED_AI_RAY_WARM_IDLE_S, default 30 minutes idle): tests and
one-off commands that import the code location must not leave one behind."""

from __future__ import annotations

import contextlib
import hashlib
import multiprocessing
import os
import shlex
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from unified_assets.placement import ray_warm

SWITCH_ENV = "UNIFIED_AI_LOCAL_WARM"  # "on": run processes and forkservers start warm


def enabled(environ: Mapping[str, str] | None = None) -> bool:
    env = os.environ if environ is None else environ
    return env.get(SWITCH_ENV, "off").strip().lower() in ("on", "1", "true", "yes")


def launcher(folder: Path, python: str) -> Path:
    """The executable multiprocessing starts instead of `python`: a two-line script that runs
    ray_warm's client (`-I -S`: the standard library only, no site, a few ms) in front of it.
    Written once per Python into the server's folder (only this user can open it)."""
    script = (f"#!/bin/sh\nexec {shlex.quote(python)} -I -S "
              f"{shlex.quote(os.path.abspath(ray_warm.__file__))} --python "
              f"{shlex.quote(python)} \"$@\"\n")
    path = folder / f"python-{hashlib.sha256(script.encode()).hexdigest()[:16]}"
    with contextlib.suppress(OSError):
        if path.read_text() == script:
            return path
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_text(script)
    tmp.chmod(0o700)
    tmp.replace(path)
    return path


def install(preload: Sequence[str]) -> Path | None:
    """With the switch on: this process's multiprocessing children start warm, and a server
    (importing `preload` besides Dagster) is started now unless one serves this environment.
    Returns the launcher, or None when off or the server folder is unusable (then nothing
    changes)."""
    if not enabled():
        return None
    if not sys.platform.startswith("linux"):  # peers' credentials, a client's fds from /proc
        print("unified-ai: warm local processes need Linux; off", file=sys.stderr)
        return None
    try:
        folder = ray_warm.socket_dir()
        path = launcher(folder, sys.executable)
    except (OSError, ray_warm.WarmUnavailable) as error:
        print(f"unified-ai: warm local processes off ({error})", file=sys.stderr)
        return None
    # The server reads its preload from the environment of whoever starts it (ray_warm):
    # the code location's training libraries; never the code location itself.
    os.environ.setdefault(ray_warm.PRELOAD_ENV, ",".join(preload))
    multiprocessing.set_executable(str(path))
    prestart(folder)
    return path


def prestart(folder: Path) -> None:
    """Start the server for this process's environment now, so that it has imported the
    libraries by the time the first run's process or forkserver asks (nothing happens while
    one is starting or serving, or within a minute of one failing to start)."""
    command = [sys.executable, "-c", ""]
    key = ray_warm.server_key(command, os.environ, os.getcwd())
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        ray_warm.spawn_server(key, command, folder)
