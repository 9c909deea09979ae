"""Champion changes (promotion and rollback) as one protocol over the ledger and the registry.

The ledger (the hash-chained decision log) is the source of truth; the MLflow `champion`
alias follows it. Every change runs under the store's champion lock:

1. verify the log (chain, and the head the registry anchors) and settle an interrupted
   change: finish it if its version still exists, else abandon it; put an alias moved
   outside the ledger back;
2. decide against the settled state (rules below) and record the change as pending;
3. move the alias, read it back, record the change as done, anchor the log head in the
   registry.

A process killed anywhere leaves either no change or a pending one, which `history` shows
as not done and the next change settles under the same lock. A registry call that fails
leaves the change pending, records an incident and raises. Nothing is ever deleted.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from resources.decision_store import AuditError, DecisionStore
from resources.mlflow_registry import CHAMPION_ALIAS, MlflowRegistry
from unified_assets.services.approvals import approval_state

LEDGER_ACTOR = "ledger"
# A registered-model tag holding "<row id>:<hash>" of the log head after the last change:
# a store that was deleted, replaced or cut short no longer contains that row.
ANCHOR_TAG = "unified_ai.ledger_head"


class ChampionError(RuntimeError):
    """A promotion or rollback that must not happen; the message says why."""


class LedgerFault(ChampionError):
    """Not a refusal but a fault (the registry failed, the log does not verify): an incident."""


@dataclass(frozen=True)
class ChangeOutcome:
    action: str  # promote | rollback | none
    from_version: str | None
    to_version: str
    message: str
    change: dict | None = None


@dataclass(frozen=True)
class LedgerState:
    """The settled history of one model: its changes and the champion they add up to."""

    changes: list[dict] = field(default_factory=list)

    @property
    def done(self) -> list[dict]:
        return [c for c in self.changes if c["status"] == "done"]

    @property
    def champion(self) -> str | None:
        done = self.done
        return done[-1]["to_version"] if done else None

    @property
    def last_seq(self) -> int:
        return self.changes[-1]["seq"] if self.changes else 0

    @property
    def rolled_back(self) -> set[str]:
        return {c["from_version"] for c in self.done if c["action"] == "rollback" and c["from_version"]}

    def earlier_champions(self) -> list[str]:
        """Versions that were champion before, most recent first, never rolled back from."""
        seen: list[str] = []
        for change in reversed(self.done):
            version = change["to_version"]
            if version != self.champion and version not in self.rolled_back and version not in seen:
                seen.append(version)
        return seen


@dataclass
class ChampionLedger:
    store: DecisionStore
    registry: MlflowRegistry

    # reading ---------------------------------------------------------------------------

    def state(self, model_name: str) -> LedgerState:
        """The recorded history, without taking the lock or repairing anything."""
        return LedgerState(self.store.changes(model_name))

    def champion(self, model_name: str) -> str | None:
        """The version the ledger says is champion (the alias follows it)."""
        return self.state(model_name).champion

    def rolled_back(self, model_name: str) -> set[str]:
        return self.state(model_name).rolled_back

    def rollback_target(self, model_name: str) -> str:
        """Where a rollback without `to_version` goes now (read-only)."""
        return self._default_target(model_name, self.state(model_name))

    # changing --------------------------------------------------------------------------

    def promote(self, model_name: str, version: str, actor: str, reason: str,
                details: dict | None = None, *, evaluated_against: str | None) -> ChangeOutcome:
        """Make an approved `version` champion. `evaluated_against` is the champion it was
        compared with; if another change happened since, the comparison is stale."""

        def choose(state: LedgerState) -> str | None:
            if state.champion == version:
                return None
            if version in state.rolled_back:
                raise ChampionError(f"v{version} was rolled back before; it is not promoted again")
            if state.champion != evaluated_against:
                raise ChampionError(
                    f"v{version} was evaluated against {_v(evaluated_against)}, but the champion "
                    f"is now {_v(state.champion)}; re-evaluate it against the current champion")
            self._require_registered(model_name, version)
            self._require_approved(model_name, version)
            return version

        return self._change(model_name, "promote", actor, reason, details, choose)

    def rollback(self, model_name: str, actor: str, reason: str, to_version: str | None = None,
                 details: dict | None = None, expected_from: str | None = None,
                 allow_any_approved: bool = False) -> ChangeOutcome:
        """Move `champion` back. By default only to an earlier champion never rolled back
        from; `allow_any_approved` (a policy choice) also admits any approved version.
        `expected_from` guards automated rollbacks: they act on evidence about one champion
        and must not move a newer one."""

        def choose(state: LedgerState) -> str | None:
            if state.champion is None:
                raise ChampionError(f"{model_name} has no champion: there is nothing to roll back")
            if expected_from and state.champion != expected_from:
                raise ChampionError(f"the rollback was asked for v{expected_from}, but the champion "
                                    f"is now {_v(state.champion)}; nothing changed")
            target = to_version or self._default_target(model_name, state)
            if target == state.champion:
                return None
            if target in state.rolled_back:
                raise ChampionError(f"v{target} was rolled back before; it is not made champion again")
            self._require_registered(model_name, target)
            if target not in state.earlier_champions():
                if not allow_any_approved:
                    raise ChampionError(
                        f"v{target} was never champion of {model_name}; a rollback goes only to an "
                        f"earlier champion ({_list(state.earlier_champions())}) unless the policy's "
                        "rollback.to_any_approved_version allows any approved version")
                self._require_approved(model_name, target)
            return target

        return self._change(model_name, "rollback", actor, reason, details, choose)

    # the protocol ----------------------------------------------------------------------

    def _change(self, model_name: str, action: str, actor: str, reason: str, details: dict | None,
                choose: Callable[[LedgerState], str | None]) -> ChangeOutcome:
        with self.store.champion_lock(model_name):
            state = self._settle(model_name)
            target = choose(state)
            current = state.champion
            if target is None:
                return ChangeOutcome("none", current, current or "", f"v{current} is already champion")
            change = self.store.record_change(
                model_name=model_name, expected_seq=state.last_seq, action=action,
                from_version=current, to_version=target, actor=actor, reason=reason,
                details=details or {})
            self._move_alias(model_name, change)
        return ChangeOutcome(action, current, target,
                             f"{action}: {_v(current) if current else 'no champion'} -> v{target} "
                             f"by {actor}", change | {"status": "done"})

    def _move_alias(self, model_name: str, change: dict) -> None:
        """Set the alias, read it back, close the change; on any failure it stays pending."""
        target = change["to_version"]
        try:
            self.registry.set_alias(model_name, target, CHAMPION_ALIAS)
            seen = self.registry.alias_version(model_name, CHAMPION_ALIAS)
            if seen != target:
                raise ChampionError(f"the alias reads back {_v(seen)}, not v{target}")
        except Exception as error:  # noqa: BLE001 - every registry failure is handled alike
            message = (f"champion change #{change['seq']} of {model_name} ({change['action']} to "
                       f"v{target}) did not take effect in the registry: {_short(error)}. It is "
                       "recorded as pending, not done; the next promotion or rollback finishes "
                       "or abandons it")
            self.store.record_incident(kind="registry_fault", model_name=model_name,
                                       actor=LEDGER_ACTOR, reason=message,
                                       details={"seq": change["seq"], "to_version": target})
            raise LedgerFault(message) from error
        self.store.record_outcome(model_name=model_name, seq=change["seq"], status="done",
                                  actor=LEDGER_ACTOR, reason=f"alias reads back v{target}")
        self._anchor(model_name)

    def _anchor(self, model_name: str) -> None:
        head = self.store.head()
        try:
            self.registry.set_model_tag(model_name, ANCHOR_TAG, f"{head['id']}:{head['hash']}")
        except Exception as error:  # noqa: BLE001 - the change itself is done and verified
            self.store.record_incident(kind="registry_fault", model_name=model_name,
                                       actor=LEDGER_ACTOR,
                                       reason=f"could not anchor the decision log in the registry: "
                                       f"{_short(error)}")

    def _settle(self, model_name: str) -> LedgerState:
        """Verify the log, then finish or abandon an interrupted change and put back an alias
        moved outside the ledger. Only ever called under the champion lock."""
        self._verify(model_name)
        state = self.state(model_name)
        pending = [c for c in state.changes if c["status"] == "pending"]
        for change in pending[:-1]:  # only the newest can be open; older ones lost their race
            self._abandon(model_name, change, "a later change was recorded after it")
        if pending:
            change = pending[-1]
            if not self.registry.version_exists(model_name, change["to_version"]):
                self._abandon(model_name, change, f"v{change['to_version']} is no longer registered")
            else:
                self._move_alias(model_name, change)
            state = self.state(model_name)
        champion = state.champion
        alias = self.registry.alias_version(model_name, CHAMPION_ALIAS)
        if champion is not None and alias != champion:
            if self.registry.version_exists(model_name, champion):
                self.registry.set_alias(model_name, champion, CHAMPION_ALIAS)
                self.store.record_incident(
                    kind="alias_drift", model_name=model_name, actor=LEDGER_ACTOR,
                    reason=f"the champion alias was {_v(alias)} outside the ledger; put back to "
                    f"v{champion}", details={"found": alias, "restored": champion})
            else:
                self._champion_missing(model_name, champion)
        return state

    def _abandon(self, model_name: str, change: dict, why: str) -> None:
        self.store.record_outcome(model_name=model_name, seq=change["seq"], status="abandoned",
                                  actor=LEDGER_ACTOR, reason=why)

    def _champion_missing(self, model_name: str, champion: str) -> None:
        """Recorded once per version; rollback to another good version still works."""
        seen = any(i["model_name"] == model_name and i["details"].get("version") == champion
                   for i in self.store.incidents("champion_missing"))
        if not seen:
            self.store.record_incident(
                kind="champion_missing", model_name=model_name, actor=LEDGER_ACTOR,
                reason=f"champion v{champion} of {model_name} is no longer in the registry; roll "
                "back to an earlier champion (`unified-ai rollback`)",
                details={"version": champion})

    def _verify(self, model_name: str) -> None:
        """`audit`, recorded as an incident and refused when it fails."""
        try:
            self.audit(model_name)
        except AuditError as error:
            self.store.record_incident(kind="audit_failure", model_name=model_name,
                                       actor=LEDGER_ACTOR, reason=str(error))
            raise LedgerFault(f"nothing changed: {error}") from None

    def audit(self, model_name: str) -> int:
        """The whole chain, and the row the registry anchored still there: a deleted or
        replaced store is refused, never taken as a fresh start. Rows verified, or AuditError."""
        rows = self.store.verify_chain()
        anchor = self.registry.model_tag(model_name, ANCHOR_TAG)
        if anchor:
            row_id, _, row_hash = anchor.partition(":")
            if not self.store.contains(int(row_id), row_hash):
                raise AuditError(
                    f"decision store {self.store.shown_url} lacks row {row_id}, which the registry "
                    f"recorded as the log head after {model_name}'s last champion change: the "
                    "store was deleted, replaced or cut short; restore it")
        elif not self.store.changes(model_name):
            alias = self.registry.alias_version(model_name, CHAMPION_ALIAS)
            if alias is not None:
                raise AuditError(
                    f"decision store {self.store.shown_url} has no history for {model_name}, but "
                    f"the registry's champion is v{alias}: restore the store that recorded it")
        return rows

    def _default_target(self, model_name: str, state: LedgerState) -> str:
        for version in state.earlier_champions():
            if self.registry.version_exists(model_name, version):
                return version
        raise ChampionError(f"{model_name} has no earlier champion to roll back to "
                            f"(current: {_v(state.champion)})")

    def _require_registered(self, model_name: str, version: str) -> None:
        if not self.registry.version_exists(model_name, version):
            raise ChampionError(f"v{version} is not a registered version of {model_name}")

    def _require_approved(self, model_name: str, version: str) -> None:
        state = approval_state(self.store.events(model_name, version), version, datetime.now(UTC))
        if state.state != "approved":
            raise ChampionError(f"v{version} of {model_name} is not approved ({state.describe()}); "
                                "only an approved version that passed its gates can be champion")


def _v(version: str | None) -> str:
    return f"v{version}" if version else "no champion"


def _list(versions: list[str]) -> str:
    return ", ".join(f"v{v}" for v in versions) or "none"


def _short(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}"[:300]
