"""The champion ledger under stress: bench/ledger.py in a reduced form (8 processes doing
random promotions and rollbacks, SIGKILLed at random points and by a registry wrapper),
plus the checks it relies on, shown to catch what they are meant to catch."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

from resources.decision_store import DecisionStore

BENCH = Path(__file__).resolve().parents[2] / "bench" / "ledger.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_ledger", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve their annotations through it
    spec.loader.exec_module(module)
    return module


def test_eight_writers_killed_at_random_keep_the_ledger_and_the_alias_consistent(tmp_path):
    run = subprocess.run(
        [sys.executable, str(BENCH), "--workers", "8", "--ops", "160", "--seed", "11",
         "--home", str(tmp_path / "home"), "--deadline", "240"],
        capture_output=True, text=True, timeout=300)
    out = run.stdout
    assert run.returncode == 0, out[-4000:] + run.stderr[-2000:]
    last = re.fullmatch(r"changes_per_s=([\d.]+) violations=(\d+)", out.strip().splitlines()[-1])
    assert last, out[-2000:]
    assert int(last.group(2)) == 0, out[-4000:]
    # not vacuous: processes were killed, also mid-operation, and changes went through
    kills = re.search(r"^kills: total=(\d+) .*ops interrupted by a kill=(\d+)", out, re.M)
    assert kills and int(kills.group(1)) > 0 and int(kills.group(2)) > 0, out[-4000:]
    changes = re.search(r"^changes: recorded=\d+ done=(\d+) ", out, re.M)
    assert changes and int(changes.group(1)) > 0, out[-4000:]
    ops = re.search(r"^ops by outcome: .*refused=(\d+) .*error=(\d+) \(total (\d+)\)", out, re.M)
    assert ops and int(ops.group(3)) >= 160 and int(ops.group(1)) > 0, out[-4000:]
    assert int(ops.group(2)) == 0, out[-4000:]  # no unexplained failure hides among the outcomes
    checks = re.search(r"^checks under the lock: checker=(\d+) workers=(\d+)", out, re.M)
    assert checks and int(checks.group(1)) + int(checks.group(2)) > 0, out[-4000:]


def change(seq, action, frm, to, status="done", row=None, **details):
    return {"seq": seq, "id": row or 100 + seq, "action": action, "from_version": frm,
            "to_version": to, "status": status, "actor": "t", "details": details}


def approval(version, row, decision="approve"):
    return {"id": row, "version": version, "kind": "decision", "decision": decision}


GOOD = [change(1, "promote", None, "1"), change(2, "promote", "1", "2"),
        change(3, "rollback", "2", "1"), change(4, "promote", "1", "3")]
APPROVED = [approval("1", 1), approval("2", 2), approval("3", 3)]
VERSIONS = {"1", "2", "3", "4"}


def test_the_snapshot_check_accepts_a_consistent_state_and_an_open_change(bench):
    assert bench.check_snapshot(GOOD, "3") == []
    assert bench.check_snapshot([], None) == []
    opened = [*GOOD, change(5, "rollback", "3", "1", status="pending")]
    assert bench.check_snapshot(opened, "3") == []  # killed before the alias moved
    assert bench.check_snapshot(opened, "1") == []  # killed after it moved


@pytest.mark.parametrize("changes, alias, expected", [
    (GOOD, "2", "the alias is v2"),
    (GOOD, None, "the alias is none"),
    ([GOOD[0], change(3, "promote", "1", "2")], "2", "not gap-free"),
    ([change(1, "promote", None, "1", status="pending"), change(2, "promote", None, "2")], "2",
     "other than the newest is pending"),
])
def test_the_snapshot_check_names_each_violation(bench, changes, alias, expected):
    problems = bench.check_snapshot(changes, alias)
    assert any(expected in p for p in problems), problems


def test_the_replay_accepts_a_valid_history(bench):
    assert bench.replay(GOOD, APPROVED, [], [], "3", VERSIONS) == []


@pytest.mark.parametrize("changes, events, expected", [
    ([GOOD[0], change(2, "promote", "1", "4")], APPROVED, "not approved before it"),
    ([GOOD[0], change(2, "promote", "1", "2", row=101)], [approval("1", 1), approval("2", 150)],
     "not approved before it"),
    ([GOOD[0], change(2, "promote", "1", "2")], [approval("1", 1), approval("2", 2, "reject"),
                                                 approval("2", 3)], "not approved before it"),
    ([*GOOD[:3], change(4, "promote", "1", "2")], APPROVED, "rolled back from earlier"),
    ([*GOOD[:2], change(3, "rollback", "2", "3")], APPROVED, "not an earlier champion"),
    ([*GOOD[:3], change(4, "rollback", "1", "2")], APPROVED, "not an earlier champion"),
    ([GOOD[0], change(2, "promote", "3", "2")], APPROVED, "starts from v3"),
    ([GOOD[0], change(2, "promote", "1", "2", evaluated_against=None)], APPROVED, "evaluated against"),
    ([*GOOD[:2], change(3, "rollback", "2", "1", expected_from="1")], APPROVED, "expected from v1"),
    ([*GOOD[:2], change(3, "promote", "2", "3", status="abandoned")], APPROVED, "abandoned"),
])
def test_the_replay_names_each_forbidden_move(bench, changes, events, expected):
    final = [c for c in changes if c["status"] == "done"][-1]["to_version"]
    problems = bench.replay(changes, events, [], [], final, VERSIONS)
    assert any(expected in p for p in problems), problems


def test_the_replay_flags_double_closes_and_audit_incidents(bench):
    outcomes = [{"id": 201, "seq": 1}, {"id": 202, "seq": 1}, {"id": 50, "seq": 2}]
    incidents = [{"id": 9, "kind": "alias_drift", "reason": "moved"},
                 {"id": 10, "kind": "registry_fault", "reason": "injected"}]
    problems = bench.replay(GOOD, APPROVED, outcomes, incidents, "3", VERSIONS)
    assert any("closed 2 times" in p for p in problems), problems
    assert any("closes change #2, which was not recorded before it" in p for p in problems), problems
    assert sum("incident" in p for p in problems) == 1, problems


def test_the_replay_reads_a_real_store(bench, settings):
    """The record shapes the replay expects are the store's: a promotion recorded without an
    approval is caught on a real history."""
    store = DecisionStore(url=settings.decisions_url)
    store.append_event(model_name="m", version="1", kind="decision", decision="approve",
                       actor="alice", reason="ok")
    for seq, (frm, to) in enumerate([(None, "1"), ("1", "2")], start=1):
        store.record_change(model_name="m", expected_seq=seq - 1, action="promote", from_version=frm,
                            to_version=to, actor="t", reason="test", details={"evaluated_against": frm})
        store.record_outcome(model_name="m", seq=seq, status="done", actor="t", reason="test")
    problems = bench.replay(store.changes("m"), store.events("m"), [], store.incidents(), "2", {"1", "2"})
    assert len(problems) == 1 and "#2" in problems[0] and "not approved before it" in problems[0], problems
