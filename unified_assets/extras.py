"""Optional dependencies, named by the extra that installs them (pyproject.toml): a missing
one is an error that says which extra and how to install it, rather than a bare ImportError
or `ray: not found` in the middle of a run."""

from __future__ import annotations

import importlib.util
import sys


class MissingExtra(RuntimeError):
    """A feature was asked for whose optional dependency is not installed."""


def require(module: str, extra: str, needed_for: str) -> None:
    if importlib.util.find_spec(module) is None:
        raise MissingExtra(
            f"{needed_for} needs `{module}`, which is not installed in this environment "
            f"({sys.prefix}): install the project's `{extra}` extra (in the checkout: "
            f"`{sys.prefix}/bin/pip install -e '.[{extra}]'`; scripts/setup.sh installs it)")
