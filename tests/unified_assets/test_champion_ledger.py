"""The champion ledger against a real MLflow registry (sqlite) and a real decision store:
changes are serialized, verified by reading the alias back, governed, and survive registry
faults, kills and tampering. Faults come from registry wrappers defined here, never from a
hook in production code."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import threading

import pytest

from resources.decision_store import AuditError, DecisionStore, DecisionStoreError
from resources.mlflow_registry import MlflowRegistry
from unified_assets.services.champion import ChampionError, ChampionLedger

MODEL = "m"


class FlakyRegistry(MlflowRegistry):
    """The real registry, except that `set_alias` fails while `broken` is set."""

    def set_alias(self, model_name, version, alias="champion"):
        if BROKEN.is_set():
            raise OSError("attempt to write a readonly database")
        super().set_alias(model_name, version, alias)


BROKEN = threading.Event()


@pytest.fixture
def world(settings):
    """A registry with versions 1..5 of MODEL (no artifacts: the ledger never loads them)
    and a decision store in which every version is approved."""
    BROKEN.clear()
    registry = FlakyRegistry(tracking_uri=settings.mlflow_tracking_uri)
    client = registry.client()
    client.create_registered_model(MODEL)
    for index in range(5):
        client.create_model_version(MODEL, source=str(settings.home / f"src{index}"))
    store = DecisionStore(url=settings.decisions_url)
    for version in ("1", "2", "3", "4"):  # v5 is registered but never approved
        approve(store, version)
    return ChampionLedger(store, registry)


def approve(store: DecisionStore, version: str) -> None:
    store.append_event(model_name=MODEL, version=version, kind="decision", decision="approve",
                       actor="alice", reason="report reviewed")


def promote_chain(ledger: ChampionLedger, *versions: str) -> None:
    current = ledger.champion(MODEL)
    for version in versions:
        ledger.promote(MODEL, version, "alice", f"v{version} passed", evaluated_against=current)
        current = version


def alias(ledger: ChampionLedger) -> str | None:
    return ledger.registry.alias_version(MODEL)


def summary(ledger: ChampionLedger) -> list[tuple]:
    return [(c["action"], c["from_version"], c["to_version"], c["status"])
            for c in ledger.store.changes(MODEL)]


# serialization ----------------------------------------------------------------------------


class PausingStore(DecisionStore):
    """Pauses after its first read of the history, as a slow process would."""

    def changes(self, model_name):
        rows = super().changes(model_name)
        if not READ.is_set():
            READ.set()
            OTHER_DONE.wait(timeout=1.0)  # never set while we hold the lock: bounded wait
        return rows


READ, OTHER_DONE = threading.Event(), threading.Event()


def test_a_change_that_read_first_never_puts_the_alias_back_to_a_stale_version(world, settings):
    """Found: A read the ledger, B recorded its rollback and moved the alias, then A
    "repaired" the alias back to the stale version and only then lost its race."""
    promote_chain(world, "1", "2", "3")
    READ.clear()
    OTHER_DONE.clear()
    slow = ChampionLedger(PausingStore(url=settings.decisions_url), world.registry)
    errors: list[BaseException] = []

    def run(ledger, to):
        try:
            ledger.rollback(MODEL, "ops", f"back to {to}", to_version=to)
        except BaseException as error:  # noqa: BLE001 - collected for the assertion
            errors.append(error)

    first = threading.Thread(target=run, args=(slow, "1"))
    first.start()
    assert READ.wait(timeout=30)
    second = threading.Thread(target=run, args=(world, "2"))
    second.start()
    second.join(timeout=60)
    OTHER_DONE.set()
    first.join(timeout=60)
    assert not errors, errors
    history = world.store.changes(MODEL)
    done = [c for c in history if c["status"] == "done"]
    assert alias(world) == done[-1]["to_version"], "the alias is the last completed change"
    # Serialized: the slow rollback (3 -> 1) went first, then 1 -> 2 on the new state.
    assert summary(world)[-2:] == [("rollback", "3", "1", "done"), ("rollback", "1", "2", "done")]


def test_racing_promotions_evaluated_against_one_champion_have_one_winner(world):
    promote_chain(world, "1")
    outcomes: dict[str, object] = {}

    def promote(version):
        try:
            outcomes[version] = world.promote(MODEL, version, "alice", "race",
                                              evaluated_against="1")
        except ChampionError as error:
            outcomes[version] = error

    threads = [threading.Thread(target=promote, args=(v,)) for v in ("2", "3")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    losers = [v for v, o in outcomes.items() if isinstance(o, ChampionError)]
    (winner,) = [v for v, o in outcomes.items() if not isinstance(o, ChampionError)]
    assert len(losers) == 1
    assert f"evaluated against v1, but the champion is now v{winner}" in str(outcomes[losers[0]])
    assert alias(world) == winner
    assert [c["to_version"] for c in world.store.changes(MODEL)] == ["1", winner]


# governed changes ---------------------------------------------------------------------------


def test_rollback_goes_only_to_an_earlier_champion_never_rolled_back_from(world):
    with pytest.raises(ChampionError, match="has no champion: there is nothing to roll back"):
        world.rollback(MODEL, "ops", "no champion yet")
    promote_chain(world, "1", "2", "3")
    with pytest.raises(ChampionError, match="v4 was never champion"):
        world.rollback(MODEL, "ops", "to an approved but never deployed version", to_version="4")
    with pytest.raises(ChampionError, match="v5 was never champion"):
        world.rollback(MODEL, "ops", "to a never-approved version", to_version="5")
    with pytest.raises(ChampionError, match="v9 is not a registered version"):
        world.rollback(MODEL, "ops", "to an unknown version", to_version="9")
    assert world.rollback(MODEL, "ops", "live AUC fell").to_version == "2"
    with pytest.raises(ChampionError, match="v3 was rolled back before; it is not made champion"):
        world.rollback(MODEL, "ops", "back to 3", to_version="3")
    with pytest.raises(ChampionError, match="v3 was rolled back before; it is not promoted"):
        world.promote(MODEL, "3", "alice", "again", evaluated_against="2")
    assert world.rollback(MODEL, "ops", "still bad").to_version == "1"
    assert world.rollback(MODEL, "ops", "repeat", to_version="1").action == "none"
    with pytest.raises(ChampionError, match="asked for v2, but the champion is now v1"):
        world.rollback(MODEL, "policy", "stale evidence", expected_from="2")
    assert alias(world) == "1"
    versions = world.registry.client().search_model_versions(f"name='{MODEL}'")
    assert sorted(int(v.version) for v in versions) == [1, 2, 3, 4, 5], "nothing deleted"


def test_a_policy_may_allow_rollback_to_any_approved_version_but_never_an_unapproved_one(world):
    promote_chain(world, "1")
    with pytest.raises(ChampionError, match="v5 of m is not approved"):
        world.rollback(MODEL, "ops", "to v5", to_version="5", allow_any_approved=True)
    outcome = world.rollback(MODEL, "ops", "to v4", to_version="4", allow_any_approved=True)
    assert (outcome.from_version, outcome.to_version) == ("1", "4") and alias(world) == "4"


def test_promotion_needs_an_approval_and_a_fresh_comparison(world):
    with pytest.raises(ChampionError, match="v5 of m is not approved"):
        world.promote(MODEL, "5", "alice", "ungated", evaluated_against=None)
    promote_chain(world, "1")
    with pytest.raises(ChampionError, match="evaluated against no champion, but the champion is now v1"):
        world.promote(MODEL, "2", "alice", "stale", evaluated_against=None)
    assert alias(world) == "1" and len(world.store.changes(MODEL)) == 1


# registry faults and kills --------------------------------------------------------------------


def test_a_registry_call_that_fails_leaves_a_pending_change_and_an_incident(world):
    """Found: with a read-only MLflow store `history` showed a rollback that never happened."""
    promote_chain(world, "1", "2")
    BROKEN.set()
    with pytest.raises(ChampionError, match="did not take effect in the registry.*pending, not done"):
        world.rollback(MODEL, "ops", "live AUC fell")
    assert alias(world) == "2"
    assert summary(world)[-1] == ("rollback", "2", "1", "pending")
    assert world.champion(MODEL) == "2", "a pending change is not the champion"
    (incident,) = world.store.incidents("registry_fault")
    assert "readonly database" in incident["reason"]
    with pytest.raises(ChampionError, match="did not take effect"):  # still broken: no lie
        world.rollback(MODEL, "ops", "again")
    BROKEN.clear()
    # The next call finishes the interrupted rollback, then decides on the settled state.
    with pytest.raises(ChampionError, match="no earlier champion to roll back to"):
        world.rollback(MODEL, "ops", "again")
    assert alias(world) == "1" and summary(world)[-1] == ("rollback", "2", "1", "done")


KILL_SCRIPT = """
import os, signal, sys
from resources.decision_store import DecisionStore
from resources.mlflow_registry import MlflowRegistry
from unified_assets.services.champion import ChampionLedger

class DyingRegistry(MlflowRegistry):
    def set_alias(self, model_name, version, alias="champion"):
        if sys.argv[4] == "after":
            super().set_alias(model_name, version, alias)
        os.kill(os.getpid(), signal.SIGKILL)

ledger = ChampionLedger(DecisionStore(url=sys.argv[1]), DyingRegistry(tracking_uri=sys.argv[2]))
ledger.promote("m", sys.argv[3], "alice", "killed half way", evaluated_against="1")
"""


@pytest.mark.parametrize("when", ["before", "after"])
def test_a_promotion_killed_at_the_registry_call_is_pending_then_finished_once(world, settings, when):
    """Found: killed inside the approval job, the alias was None while history said done."""
    promote_chain(world, "1")
    killed = subprocess.run(
        [sys.executable, "-c", KILL_SCRIPT, settings.decisions_url, settings.mlflow_tracking_uri,
         "2", when], capture_output=True, text=True, timeout=120)
    assert killed.returncode == -9, killed.stderr
    assert alias(world) == ("2" if when == "after" else "1")
    assert summary(world)[-1] == ("promote", "1", "2", "pending")
    assert world.promote(MODEL, "2", "alice", "retry", evaluated_against="1").action == "none"
    assert alias(world) == "2"
    assert summary(world) == [("promote", None, "1", "done"), ("promote", "1", "2", "done")]


def test_a_deleted_champion_version_is_reported_and_rollback_still_works(world):
    """Found: a champion deleted in MLflow made every later change fail for ever."""
    promote_chain(world, "1", "2")
    world.registry.client().delete_model_version(MODEL, "2")
    with pytest.raises(ChampionError, match="evaluated against no champion, but the champion is now v2"):
        world.promote(MODEL, "3", "alice", "evaluated while v2 was gone", evaluated_against=None)
    (incident,) = world.store.incidents("champion_missing")
    assert "champion v2 of m is no longer in the registry" in incident["reason"]
    outcome = world.rollback(MODEL, "ops", "champion deleted")
    assert (outcome.from_version, outcome.to_version) == ("2", "1") and alias(world) == "1"
    assert len(world.store.incidents("champion_missing")) == 1


def test_an_alias_moved_outside_the_ledger_is_put_back_with_an_incident(world):
    promote_chain(world, "1", "2")
    world.registry.client().set_registered_model_alias(MODEL, "champion", "5")
    world.rollback(MODEL, "ops", "live AUC fell")
    assert alias(world) == "1"
    (incident,) = world.store.incidents("alias_drift")
    assert "alias was v5 outside the ledger; put back to v2" in incident["reason"]


# tampering -----------------------------------------------------------------------------------


def _sql(settings, statement: str) -> None:
    with sqlite3.connect(settings.home / "decisions.db") as conn:
        conn.execute(statement)


def test_rows_deleted_with_a_plain_sqlite_client_stop_every_change(world, settings):
    """Found: after a deleted rollback row the ledger moved the alias to a rolled-back version."""
    promote_chain(world, "1", "2")
    world.rollback(MODEL, "ops", "bad")
    _sql(settings, "DELETE FROM decision_log WHERE record = 'change' AND change_seq = 3")
    with pytest.raises(AuditError, match=r"row \d+ \(outcome\) does not follow the row before it"):
        world.store.verify_chain()
    with pytest.raises(ChampionError, match="nothing changed: .*does not follow"):
        world.promote(MODEL, "2", "alice", "v2 again", evaluated_against="1")
    assert alias(world) == "1"
    (incident,) = world.store.incidents("audit_failure")
    assert "does not follow the row before it" in incident["reason"]


def test_an_edited_decision_is_caught_before_it_acts(world, settings):
    world.store.append_event(model_name=MODEL, version="5", kind="decision", decision="reject",
                             actor="alice", reason="segment APAC too weak")
    _sql(settings, "UPDATE decision_log SET payload = replace(payload, '\"reject\"', '\"approve\"') "
                   "WHERE version = '5' AND payload LIKE '%reject%'")
    with pytest.raises(ChampionError, match=r"row \d+ \(event\) was edited"):
        world.promote(MODEL, "5", "alice", "tampered", evaluated_against=None)
    assert alias(world) is None


def test_a_row_appended_without_the_ledger_key_does_not_verify(world, settings):
    """Found: two rows appended with correct SHA-256 hashes (a forged promotion to a version
    that failed its gates, then its "done") passed `audit verify` and moved the alias."""
    import json

    from resources.decision_store import chain_hash

    promote_chain(world, "1")
    with sqlite3.connect(settings.home / "decisions.db") as conn:
        head_hash = conn.execute("SELECT hash FROM decision_log ORDER BY id DESC LIMIT 1").fetchone()[0]
        payload = json.dumps({"record": "change", "model_name": MODEL, "seq": 2, "action": "promote",
                              "from_version": "1", "to_version": "5", "actor": "alice",
                              "reason": "forged", "created_at": "2026-12-01T00:00:00+00:00",
                              "details": {}}, sort_keys=True, separators=(",", ":"))
        guessed = chain_hash(b"not the ledger key", head_hash, payload)
        conn.execute("INSERT INTO decision_log (record, model_name, change_seq, payload, prev_hash, "
                     "hash) VALUES ('change', ?, 2, ?, ?, ?)", (MODEL, payload, head_hash, guessed))
    with pytest.raises(AuditError, match=r"row \d+ \(change\) was edited"):
        world.store.verify_chain()
    with pytest.raises(ChampionError, match="nothing changed"):
        world.rollback(MODEL, "ops", "settle the forged change")
    assert alias(world) == "1"


def test_a_store_whose_key_file_is_gone_is_refused_not_rekeyed(world, settings):
    promote_chain(world, "1")
    (settings.home / "decisions.db.key").unlink()
    with pytest.raises(DecisionStoreError, match=r"ledger key .*decisions\.db\.key is missing"):
        DecisionStore(url=settings.decisions_url).changes(MODEL)


def test_the_last_rows_cut_off_are_caught_through_the_registry_anchor(world, settings):
    promote_chain(world, "1", "2")
    _sql(settings, "DELETE FROM decision_log WHERE id = (SELECT max(id) FROM decision_log)")
    with pytest.raises(ChampionError, match="lacks row .* cut short"):
        world.rollback(MODEL, "ops", "bad")


def test_a_deleted_store_is_refused_not_taken_as_a_fresh_start(world, settings):
    """Found: a deleted decisions.db silently started a new history."""
    promote_chain(world, "1", "2")
    world.rollback(MODEL, "ops", "bad")
    (settings.home / "decisions.db").unlink()
    fresh = ChampionLedger(DecisionStore(url=settings.decisions_url), world.registry)
    approve(fresh.store, "2")
    with pytest.raises(ChampionError, match="lacks row .*deleted, replaced or cut short; restore it"):
        fresh.promote(MODEL, "2", "alice", "rolled back before", evaluated_against="1")
    assert alias(world) == "1"


def test_a_corrupt_store_names_the_file(settings):
    (settings.home / "decisions.db").write_bytes(b"this is not a database" * 100)
    store = DecisionStore(url=settings.decisions_url)
    with pytest.raises(DecisionStoreError, match=r"decision store sqlite:///.*decisions\.db: cannot"):
        store.changes(MODEL)


def test_audit_of_a_deleted_store_fails_instead_of_reporting_zero_rows_intact(world, settings):
    """Found: after decisions.db was deleted `audit verify` said "intact: 0 rows verified"."""
    promote_chain(world, "1")
    assert world.audit(MODEL) > 0
    (settings.home / "decisions.db").unlink()
    fresh = ChampionLedger(DecisionStore(url=settings.decisions_url), world.registry)
    with pytest.raises(AuditError, match="lacks row .*deleted, replaced or cut short"):
        fresh.audit(MODEL)
