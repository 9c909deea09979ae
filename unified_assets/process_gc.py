"""Keep the garbage collector off the libraries a process loaded before its work.

A run process holds Dagster, pandas, scikit-learn, torch and MLflow: about 800,000 objects
the collector tracks. Each full collection walks all of them (0.5 s on this machine), and
the lifecycle's events and frames allocate enough to start one where the same computations
in a plain script do not (bench/RESULTS.md, "A full collection"). `gc.freeze()` moves every
object tracked so far into the permanent generation, which collections skip: a full pass
then walks only what the work allocated (0.09 s). In a process that forks (the warm
server), it is also what CPython's documentation advises before `fork()`: the children
inherit the frozen objects and never write to those pages to mark them, so the pages stay
shared.

Frozen objects are never collected: what was garbage at the freeze stays in memory. Hence
once per process for a process that keeps working (`freeze_once`), and before each fork in
a server whose heap is the preload (`freeze_loaded`).
"""

from __future__ import annotations

import gc
import threading

_frozen_once = False
_lock = threading.Lock()


def freeze_loaded() -> int:
    """Freeze every object tracked now; returns how many objects are frozen in all."""
    gc.freeze()
    return gc.get_freeze_count()


def freeze_once() -> bool:
    """`freeze_loaded` the first time this process asks; True when this call froze."""
    global _frozen_once
    with _lock:
        if _frozen_once:
            return False
        _frozen_once = True
    freeze_loaded()
    return True
