"""Imported by the training run's forkserver (unified_assets/definitions.py
TRAINING_PRELOAD), so that each step it forks starts with MLflow's map of installed
distributions. The warm step servers (unified_assets/placement/ray_warm.py) call the same
function themselves (`DISTRIBUTIONS_WARMUP`): they never import project code.

MLflow checks a model's pip requirements against the environment on every `log_model` (and
`load_model`, unless `suppress_warnings`), and its first check in a process maps every
installed distribution to its modules (`importlib.metadata.packages_distributions`): 1.1-1.6 s
on this machine, in every training step (bench/RESULTS.md, "Training preload"). A
distribution installed after the server started is missing from the map, which at worst
makes MLflow warn about a mismatch that is not there. A failure here is only logged: the
forkserver would stop on anything but an ImportError, and MLflow builds the map itself when
it needs it."""

import importlib
import logging

from resources.mlflow_registry import DISTRIBUTIONS_WARMUP

_module, _, _call = DISTRIBUTIONS_WARMUP.partition(":")
try:
    getattr(importlib.import_module(_module), _call)()
except Exception as error:  # noqa: BLE001 - a warm-up only, see the module
    logging.getLogger(__name__).debug("MLflow's distribution map not built: %s", error)
