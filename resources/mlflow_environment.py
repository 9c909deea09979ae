"""Imported by a server that forks processes which log models (the training forkserver,
the warm step servers of unified_assets/placement/ray_warm.py), so that each one it forks
starts with MLflow's map of installed distributions.

MLflow checks a model's pip requirements against the environment on every `log_model`, and
its first check in a process maps every installed distribution to its modules
(`importlib.metadata.packages_distributions`): 1.1-1.6 s on this machine, in every training
step (bench/RESULTS.md). The map is MLflow's own, built by MLflow's own function; a
distribution installed after the server started is missing from it, which at worst makes
MLflow warn about a mismatch that is not there. No setting turns the check off."""

from mlflow.utils import requirements_utils

# Private, but the function MLflow itself calls first in `_check_requirement_satisfied`.
requirements_utils._init_packages_to_modules_map()
