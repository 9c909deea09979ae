"""Which candidates a deployment trains: shipped names or import paths to a user's own.

`UNIFIED_AI_CANDIDATES=sklearn,torch,my_models.candidates:LOGISTIC` trains the two shipped
candidates and one from the user's package. A wrong entry fails the code location's load with
a line naming the setting and the entry: training silently without a declared model would
hide it from the gates.
"""

from __future__ import annotations

import importlib
import os
import sys

from unified_assets.candidates.declaration import Candidate
from unified_assets.candidates.shipped import SHIPPED
from unified_assets.settings import CANDIDATES_ENV


class CandidateError(ValueError):
    """A candidate entry that cannot be used, named with where it came from."""


def resolve_candidate(entry: str, source: str = CANDIDATES_ENV) -> Candidate:
    """A shipped name ("sklearn") or `package.module:ATTRIBUTE` naming a `Candidate`."""
    entry = entry.strip()
    if entry in SHIPPED:
        return SHIPPED[entry]
    if ":" not in entry:
        raise CandidateError(f"{source}: {entry!r} is neither a shipped candidate "
                             f"({', '.join(SHIPPED)}) nor an import path 'package.module:NAME'")
    module_name, _, attribute = entry.partition(":")
    try:
        module = _import_user_module(module_name)
    except ImportError as error:
        raise CandidateError(f"{source}: {entry!r}: module {module_name!r} cannot be imported "
                             f"({error})") from None
    try:
        found = getattr(module, attribute)
    except AttributeError:
        raise CandidateError(f"{source}: {entry!r}: module {module_name!r} has no "
                             f"{attribute!r}") from None
    if not isinstance(found, Candidate):
        raise CandidateError(f"{source}: {entry!r} is a {type(found).__name__}, not a "
                             "unified_assets.candidates.Candidate")
    return found


def _import_user_module(name: str):
    """Import a user's module as `dagster dev` does: from the folder Dagster runs in, which
    `dagster dev` puts on sys.path but `dagster definitions validate` and a step process
    started elsewhere may not. Appended, so it never shadows an installed package."""
    folder = os.getcwd()
    if folder not in sys.path and "" not in sys.path:
        sys.path.append(folder)
    return importlib.import_module(name)


def resolve_candidates(entries: tuple[str, ...] | list[str],
                       source: str = CANDIDATES_ENV) -> tuple[Candidate, ...]:
    """Every entry resolved, in order; names must be unique and at least one given."""
    candidates = tuple(resolve_candidate(entry, source) for entry in entries if entry.strip())
    if not candidates:
        raise CandidateError(f"{source}: no candidate declared; list at least one "
                             f"(shipped: {', '.join(SHIPPED)})")
    seen: dict[str, str] = {}
    for entry, candidate in zip((e for e in entries if e.strip()), candidates, strict=True):
        if candidate.name in seen:
            raise CandidateError(f"{source}: {entry!r} and {seen[candidate.name]!r} both declare "
                                 f"a candidate named {candidate.name!r}")
        seen[candidate.name] = entry
    return candidates
