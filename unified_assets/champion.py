"""Champion changes (promotion and rollback) as one protocol over the ledger and the registry.

1. append the change to the ledger (unique sequence number: of two racing changes exactly
   one is recorded, the other fails clearly);
2. move the `champion` alias in one registry call.

A process killed between 1 and 2 leaves the alias on the previous, complete version; the
next promotion or rollback sees the ledger ahead of the alias and finishes that change
first, once. Nothing is ever deleted.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from resources.decision_store import DecisionStore
from resources.mlflow_registry import CHAMPION_ALIAS, MlflowRegistry

# Fault injection for the interruption test: the process exits at this point when
# UNIFIED_AI_CRASH_AT names it.
CRASH_ENV = "UNIFIED_AI_CRASH_AT"


def _crash_point(name: str) -> None:
    if os.environ.get(CRASH_ENV) == name:
        os._exit(137)


class ChampionError(RuntimeError):
    """A promotion or rollback that must not happen; the message says why."""


@dataclass(frozen=True)
class ChangeOutcome:
    action: str  # promote | rollback | none
    from_version: str | None
    to_version: str
    message: str
    change: dict | None = None


@dataclass
class ChampionLedger:
    store: DecisionStore
    registry: MlflowRegistry

    def _sync(self, model_name: str) -> tuple[list[dict], str | None]:
        """Changes so far and the alias, after finishing an interrupted change if any."""
        changes = self.store.changes(model_name)
        alias = self.registry.alias_version(model_name, CHAMPION_ALIAS)
        if changes and alias != changes[-1]["to_version"]:
            self.registry.set_alias(model_name, changes[-1]["to_version"], CHAMPION_ALIAS)
            alias = changes[-1]["to_version"]
        return changes, alias

    def rolled_back(self, model_name: str) -> set[str]:
        return {c["from_version"] for c in self.store.changes(model_name)
                if c["action"] == "rollback" and c["from_version"]}

    def _apply(self, model_name: str, changes: list[dict], action: str, current: str | None,
               target: str, actor: str, reason: str, details: dict) -> ChangeOutcome:
        change = self.store.record_change(
            model_name=model_name, expected_seq=changes[-1]["seq"] if changes else 0,
            action=action, from_version=current, to_version=target, actor=actor, reason=reason,
            details=details,
        )
        _crash_point("registry")
        self.registry.set_alias(model_name, target, CHAMPION_ALIAS)
        before = f"v{current}" if current else "no champion"
        return ChangeOutcome(action, current, target,
                             f"{action}: {before} -> v{target} by {actor}", change)

    def promote(self, model_name: str, version: str, actor: str, reason: str,
                details: dict | None = None) -> ChangeOutcome:
        changes, current = self._sync(model_name)
        if current == version:
            return ChangeOutcome("none", current, version, f"v{version} is already champion")
        if version in self.rolled_back(model_name):
            raise ChampionError(f"v{version} was rolled back before; it is not promoted again")
        return self._apply(model_name, changes, "promote", current, version, actor, reason,
                           details or {})

    def rollback_target(self, model_name: str) -> str:
        """The most recent earlier champion that was never rolled back from."""
        changes, current = self._sync(model_name)
        bad = self.rolled_back(model_name) | {current}
        for change in reversed(changes):
            for version in (change["from_version"], change["to_version"]):
                if version and version not in bad:
                    return version
        raise ChampionError(f"{model_name} has no earlier champion to roll back to "
                            f"(current: v{current or 'none'})")

    def rollback(self, model_name: str, actor: str, reason: str, to_version: str | None = None,
                 details: dict | None = None, expected_from: str | None = None) -> ChangeOutcome:
        """`expected_from` guards automated rollbacks: they act on evidence about one
        champion and must not move a newer one."""
        changes, current = self._sync(model_name)
        if expected_from and current != expected_from:
            raise ChampionError(f"the rollback was asked for v{expected_from}, but the champion is "
                                f"now v{current or 'none'}; nothing changed")
        target = to_version or self.rollback_target(model_name)
        if not self.registry.version_exists(model_name, target):
            raise ChampionError(f"v{target} is not a registered version of {model_name}")
        if target != current and target in self.rolled_back(model_name):
            raise ChampionError(f"v{target} was rolled back before; it is not made champion again")
        if target == current:
            return ChangeOutcome("none", current, target, f"v{target} is already champion")
        return self._apply(model_name, changes, "rollback", current, target, actor, reason,
                           details or {})
