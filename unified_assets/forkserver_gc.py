"""Imported last by the local forkservers (`preload_modules` in unified_assets/definitions.py):
from then on, what the process holds goes to the collector's permanent generation before each
fork, as the warm server does before its own (unified_assets/placement/ray_warm.py).

A step process forked from a forkserver that preloaded Dagster, torch, MLflow and the code
location walks all of it in its first full collection and, writing into each object's header,
makes those pages its own: 0.42-0.45 s and 176 MB per step process, against under 1 ms and
nothing when frozen (bench/fork_gc.py). Frozen objects are never freed, which is what a
forkserver's preload is anyway. `os.register_at_fork` is the documented hook; importing this
module anywhere else would freeze that process's objects before its forks too, so only the
forkservers' preload lists name it.
"""

from __future__ import annotations

import gc
import os

os.register_at_fork(before=gc.freeze)
