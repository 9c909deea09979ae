"""Stress benchmark of the champion ledger: concurrent writers, random SIGKILLs, registry faults.

--workers processes (default 8) do random promotions and rollbacks of one model through
`ChampionLedger`, against a sqlite decision store and a sqlite MLflow registry:

* promote: approve a random version (an approval decision in the store), then promote it with
  `evaluated_against` = the champion read just before (a stale read must be refused);
* promote_unapproved: promote a random version without approving it first;
* rollback: a rollback to the default target;
* rollback_to: a rollback to a random version (half the time one the worker saw as an earlier
  champion), sometimes with `expected_from` = the champion it read.

Every seventh version is rejected at set-up (the first decision stands), so promoting it must
always be refused. Faults come from outside the production code:

* workers use `FaultyRegistry`, a subclass of `MlflowRegistry` defined here, which at random
  SIGKILLs its own process, raises, or hangs inside `set_alias` / `set_model_tag`, before or
  after the real call (--kill-rate, --fault-rate, --hang-rate, per call);
* the supervisor SIGKILLs random workers at random moments (on average --kill-rate kills per
  finished operation), SIGKILLs a worker hung in the registry for over --hang-timeout, and
  restarts every killed worker (a fork of the supervisor, which imported everything but never
  opened a database) until the operation budget (--ops, killed operations included) is spent.

Checks ("after every step" in a concurrent run):

* snapshots under `store.champion_lock`: a checker process polling, and each worker after each
  operation. Change numbers are 1..n, only the newest change may be pending, and the alias is
  the last done change's version (or, only while the newest change is pending, its version);
* at the end, after one settling ledger call, the whole history is replayed independently of
  the ledger's code: each done change starts from the previous done change's version;
  promotions only to versions approved before the change was recorded, never to one rolled back
  from, and only from the champion they were evaluated against; rollbacks only to an earlier
  champion never rolled back from (and from `expected_from` when given); no change abandoned
  (no version is ever deleted here), none left pending, each closed at most once; the chain
  verifies; no audit_failure or alias_drift incident; the final alias is the last done change.

Usage: python bench/ledger.py [--workers 8] [--ops 1000] [--kill-rate 0.1] [--seed 7] [--home DIR]
The last line is `changes_per_s=<x> violations=<n>`; exit 1 if violations > 0, 2 if the run did
not complete (deadline, crashing workers).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import random
import signal
import sqlite3
import sys
import tempfile
import time
from collections import Counter, defaultdict
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from statistics import median

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pydantic import PrivateAttr  # noqa: E402

from resources.decision_store import (  # noqa: E402
    LOCK_TIMEOUT_S,
    ChangeConflict,
    DecisionStore,
    DecisionStoreError,
)
from resources.mlflow_registry import CHAMPION_ALIAS, MlflowRegistry  # noqa: E402
from unified_assets.services.champion import ChampionError, ChampionLedger  # noqa: E402

MODEL = "stress"
THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS",
               "VECLIB_MAXIMUM_THREADS")
OUTCOMES = ("done", "none", "refused", "conflict", "fault", "killed", "error")
KINDS = ("promote", "promote_unapproved", "rollback", "rollback_to")
WEIGHTS = (0.45, 0.10, 0.25, 0.20)
REJECT_EVERY = 7  # versions divisible by this are rejected at set-up
LOCK_WAIT_S = 30.0
# ChampionError messages -> refusal reason (the messages of unified_assets/champion.py)
REFUSALS = (
    ("evaluated against", "stale_evaluation"),
    ("was rolled back before", "rolled_back_before"),
    ("is not approved", "not_approved"),
    ("was never champion", "not_an_earlier_champion"),
    ("no earlier champion", "no_earlier_champion"),
    ("has no champion", "no_champion"),
    ("the rollback was asked for", "expected_from_stale"),
    ("is not a registered version", "not_registered"),
)


def pin_threads() -> None:
    for name in THREAD_VARS:
        os.environ.setdefault(name, "1")


@dataclass(frozen=True)
class Config:
    home: Path
    workers: int = 8
    ops: int = 1000
    kill_rate: float = 0.1
    fault_rate: float = 0.05
    hang_rate: float = 0.01
    hang_timeout: float = 0.5
    seed: int = 7
    versions: int = 0  # 0: max(30, ops // 4)
    worker_checks: bool = True
    deadline: float = 900.0

    @property
    def n_versions(self) -> int:
        return self.versions or max(30, self.ops // 4)

    @property
    def mlflow_uri(self) -> str:
        return f"sqlite:///{self.home / 'mlflow.db'}"

    @property
    def store_url(self) -> str:
        return f"sqlite:///{self.home / 'decisions.db'}"

    @property
    def logs(self) -> Path:
        return self.home / "logs"

    @property
    def stop_file(self) -> Path:
        return self.home / "STOP"


class Log:
    """JSON lines appended with one write(2) each: what was written survives a SIGKILL."""

    def __init__(self, path: Path):
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)

    def __call__(self, record: dict) -> None:
        os.write(self.fd, (json.dumps(record, default=str) + "\n").encode())


# fault injection ------------------------------------------------------------------------------


class InjectedFault(RuntimeError):
    """A registry failure injected by FaultyRegistry."""


class FaultyRegistry(MlflowRegistry):
    """The real registry, except that its writes (`set_alias`, `set_model_tag`) at random
    SIGKILL the process, raise, or hang, before or after the real call."""

    kill_rate: float = 0.0
    fault_rate: float = 0.0
    hang_rate: float = 0.0
    hang_s: float = 3600.0
    _rng: random.Random | None = PrivateAttr(default=None)
    _note: object = PrivateAttr(default=None)

    def arm(self, rng: random.Random, note) -> FaultyRegistry:
        self._rng, self._note = rng, note
        return self

    def _maybe_fault(self, call: str, when: str) -> None:
        if self._rng is None:
            return
        draw = self._rng.random()
        kill, fault = self.kill_rate / 2, self.fault_rate / 2
        hang = self.hang_rate if when == "before" else 0.0
        if draw < kill:
            self._note({"t": "fault", "what": "kill", "call": call, "when": when})
            os.kill(os.getpid(), signal.SIGKILL)
            time.sleep(60)  # never reached: SIGKILL is delivered before the call returns
        elif draw < kill + fault:
            self._note({"t": "fault", "what": "raise", "call": call, "when": when})
            raise InjectedFault(f"injected registry failure {when} {call}")
        elif draw < kill + fault + hang:
            self._note({"t": "fault", "what": "hang", "call": call, "when": when})
            parent, end = os.getppid(), time.monotonic() + self.hang_s
            while time.monotonic() < end and os.getppid() == parent:
                time.sleep(0.05)
            raise InjectedFault(f"injected registry hang in {call} ended without a kill")

    def set_alias(self, model_name: str, version: str, alias: str = CHAMPION_ALIAS) -> None:
        self._maybe_fault("set_alias", "before")
        super().set_alias(model_name, version, alias)
        self._maybe_fault("set_alias", "after")

    def set_model_tag(self, model_name: str, key: str, value: str) -> None:
        self._maybe_fault("set_model_tag", "before")
        super().set_model_tag(model_name, key, value)
        self._maybe_fault("set_model_tag", "after")


class TimedStore(DecisionStore):
    """The real store; notes how long each champion lock was waited for and held."""

    _note: object = PrivateAttr(default=None)
    _what: str = PrivateAttr(default="op")

    def timed(self, note, what: str) -> TimedStore:
        self._note, self._what = note, what
        return self

    @contextmanager
    def champion_lock(self, model_name: str, timeout_s: float = LOCK_TIMEOUT_S):
        asked = time.monotonic()
        with super().champion_lock(model_name, timeout_s):
            got = time.monotonic()
            try:
                yield
            finally:
                if self._note is not None:
                    self._note({"t": "lock", "what": self._what, "wait": round(got - asked, 5),
                                "hold": round(time.monotonic() - got, 5)})


# checks (pure functions over the recorded history) ---------------------------------------------


def check_snapshot(changes: list[dict], alias: str | None) -> list[str]:
    """The invariant on a snapshot taken under the champion lock."""
    problems = []
    for index, change in enumerate(changes, start=1):
        if change["seq"] != index:
            problems.append(f"change numbers are not gap-free: position {index} holds #{change['seq']} "
                            f"{_row(change)}")
            break
    for change in changes[:-1]:
        if change["status"] == "pending":
            problems.append(f"a change other than the newest is pending: {_row(change)}")
    done = [c for c in changes if c["status"] == "done"]
    allowed = {done[-1]["to_version"] if done else None}
    if changes and changes[-1]["status"] == "pending":
        allowed.add(changes[-1]["to_version"])
    if alias not in allowed:
        problems.append(f"the alias is {_v(alias)}, not the last done change's version "
                        f"({' or '.join(_v(v) for v in sorted(allowed, key=str))}); newest "
                        f"{_row(changes[-1]) if changes else 'none'}")
    return problems


def replay(changes: list[dict], events: list[dict], outcome_rows: list[dict] | None,
           incidents: list[dict], final_alias: str | None, registered: set[str]) -> list[str]:
    """Every rule over the whole history, recomputed here (not with the ledger's own code)."""
    problems = check_snapshot(changes, final_alias)
    first_decision: dict[str, dict] = {}
    for event in sorted(events, key=lambda e: e["id"]):
        if event["kind"] == "decision":
            first_decision.setdefault(event["version"], event)
    champion: str | None = None
    rolled_back: set[str] = set()
    past: list[str] = []
    for change in changes:
        if change["status"] == "pending":
            problems.append(f"left pending after settling: {_row(change)}")
        if change["status"] == "abandoned":
            problems.append(f"abandoned although its version is registered: {_row(change)}")
        if change["status"] != "done":
            continue
        target, details = change["to_version"], change.get("details") or {}
        if change["from_version"] != champion:
            problems.append(f"starts from {_v(change['from_version'])}, but the champion was "
                            f"{_v(champion)}: {_row(change)}")
        if target not in registered:
            problems.append(f"moved to an unregistered version: {_row(change)}")
        if target == champion:
            problems.append(f"a change to the current champion: {_row(change)}")
        if change["action"] == "promote":
            decision = first_decision.get(target)
            if decision is None or decision["decision"] != "approve" or decision["id"] > change["id"]:
                problems.append(f"promotion of a version not approved before it: {_row(change)}")
            if target in rolled_back:
                problems.append(f"promotion of a version rolled back from earlier: {_row(change)}")
            if "evaluated_against" in details and details["evaluated_against"] != champion:
                problems.append(f"promotion evaluated against {_v(details['evaluated_against'])} "
                                f"while the champion was {_v(champion)}: {_row(change)}")
        elif change["action"] == "rollback":
            earlier = [v for v in past if v != champion and v not in rolled_back]
            if champion is None:
                problems.append(f"rollback with no champion: {_row(change)}")
            if target not in earlier:
                problems.append(f"rollback to {_v(target)}, not an earlier champion never rolled back "
                                f"from ({', '.join(_v(v) for v in dict.fromkeys(earlier)) or 'none'}): "
                                f"{_row(change)}")
            if details.get("expected_from") and details["expected_from"] != champion:
                problems.append(f"rollback expected from {_v(details['expected_from'])} moved "
                                f"{_v(champion)}: {_row(change)}")
            if champion is not None:
                rolled_back.add(champion)
        else:
            problems.append(f"unknown action: {_row(change)}")
        champion = target
        past.append(target)
    if outcome_rows is not None:
        change_ids = {c["seq"]: c["id"] for c in changes}
        closed = Counter(o["seq"] for o in outcome_rows)
        for seq, count in sorted(closed.items()):
            if count > 1:
                problems.append(f"change #{seq} was closed {count} times")
        for row in outcome_rows:
            if row["seq"] not in change_ids or row["id"] < change_ids[row["seq"]]:
                problems.append(f"outcome row {row['id']} closes change #{row['seq']}, "
                                "which was not recorded before it")
    for incident in incidents:
        if incident["kind"] in ("audit_failure", "alias_drift"):
            problems.append(f"incident {incident['kind']} (row {incident['id']}): {incident['reason']}")
    return problems


def _v(version: str | None) -> str:
    return f"v{version}" if version is not None else "none"


def _row(change: dict) -> str:
    details = change.get("details") or {}
    return (f"#{change['seq']} (row {change.get('id')}) {change['action']} {_v(change['from_version'])} -> "
            f"{_v(change['to_version'])} {change['status']} by {change['actor']} "
            f"{json.dumps(details, sort_keys=True)}")


# processes ---------------------------------------------------------------------------------------


def _redirect_output(path: Path) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)


def _setup(cfg: Config) -> None:
    """Runs in a child: the supervisor itself never opens a database (it forks the workers)."""
    _redirect_output(cfg.logs / "setup.err")
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=cfg.mlflow_uri, registry_uri=cfg.mlflow_uri)
    client.search_experiments()  # creates and migrates the MLflow database
    client.create_registered_model(MODEL)
    for index in range(1, cfg.n_versions + 1):
        client.create_model_version(MODEL, source=str(cfg.home / "src" / str(index)))
    store = DecisionStore(url=cfg.store_url)
    for version in range(REJECT_EVERY, cfg.n_versions + 1, REJECT_EVERY):
        store.append_event(model_name=MODEL, version=str(version), kind="decision", decision="reject",
                           actor="bench", reason="rejected at set-up: must never become champion")


def _check_locked(store: DecisionStore, registry: MlflowRegistry, log: Log, who: str) -> None:
    if isinstance(store, TimedStore):
        store._what = "check"
    try:
        with store.champion_lock(MODEL, timeout_s=LOCK_WAIT_S):
            changes = store.changes(MODEL)
            alias = registry.alias_version(MODEL)
    except Exception as error:  # noqa: BLE001 - a check that could not read is reported, not fatal
        log({"t": "chk_err", "by": who, "error": _short(error)})
        return
    done = [c["seq"] for c in changes if c["status"] == "done"]
    log({"t": "chk", "by": who, "n": len(changes), "done": done[-1] if done else 0,
         "newest": changes[-1]["status"] if changes else None,
         "problems": check_snapshot(changes, alias)})


def _checker(cfg: Config, parent: int) -> None:
    _redirect_output(cfg.logs / "checker.err")
    log = Log(cfg.logs / "checker.jsonl")
    store = TimedStore(url=cfg.store_url).timed(log, "check")
    registry = MlflowRegistry(tracking_uri=cfg.mlflow_uri)
    rng = random.Random(f"{cfg.seed}-checker")
    while not cfg.stop_file.exists() and os.getppid() == parent:
        _check_locked(store, registry, log, "checker")
        time.sleep(rng.uniform(0.002, 0.02))


def _worker(cfg: Config, slot: int, incarnation: int, parent: int) -> None:
    name = f"w{slot}-{incarnation}"
    _redirect_output(cfg.logs / f"{name}.err")
    log = Log(cfg.logs / f"{name}.jsonl")
    store = TimedStore(url=cfg.store_url).timed(log, "op")
    registry = FaultyRegistry(tracking_uri=cfg.mlflow_uri, kill_rate=cfg.kill_rate,
                              fault_rate=cfg.fault_rate, hang_rate=cfg.hang_rate)
    registry.arm(random.Random(f"{cfg.seed}-{name}-faults"), log)
    plain = MlflowRegistry(tracking_uri=cfg.mlflow_uri)
    ledger = ChampionLedger(store, registry)
    rng = random.Random(f"{cfg.seed}-{name}")
    versions = [str(v) for v in range(1, cfg.n_versions + 1)]
    op = 0
    while not cfg.stop_file.exists() and os.getppid() == parent:
        op += 1
        kind = rng.choices(KINDS, WEIGHTS)[0]
        log({"t": "start", "op": op, "kind": kind})
        store._what = "op"
        outcome, reason = _operation(ledger, store, rng, versions, kind, f"{name}.{op}")
        log({"t": "end", "op": op, "kind": kind, "outcome": outcome, "reason": reason})
        if cfg.worker_checks:
            _check_locked(store, plain, log, name)


def _operation(ledger: ChampionLedger, store: DecisionStore, rng: random.Random, versions: list[str],
               kind: str, actor: str) -> tuple[str, str]:
    try:
        state = ledger.state(MODEL)  # read without the lock, as a real caller does: may be stale
        champion = state.champion
        if kind in ("promote", "promote_unapproved"):
            fresh = [v for v in versions if v not in state.rolled_back and v != champion]
            version = rng.choice(fresh if fresh and rng.random() < 0.8 else versions)
            if kind == "promote":
                store.append_event(model_name=MODEL, version=version, kind="decision",
                                   decision="approve", actor=actor, reason="stress approval")
            result = ledger.promote(MODEL, version, actor, "stress promotion",
                                    {"evaluated_against": champion, "op": actor},
                                    evaluated_against=champion)
        elif kind == "rollback":
            result = ledger.rollback(MODEL, actor, "stress rollback", details={"op": actor})
        else:
            earlier = state.earlier_champions()
            target = rng.choice(earlier if earlier and rng.random() < 0.5 else versions)
            expected = champion if rng.random() < 0.3 else None
            result = ledger.rollback(MODEL, actor, "stress rollback to", to_version=target,
                                     details={"op": actor, "expected_from": expected},
                                     expected_from=expected)
        return ("none" if result.action == "none" else "done"), result.action
    except ChampionError as error:
        return _classify(error)
    except ChangeConflict as error:
        return "conflict", _short(error)
    except InjectedFault as error:
        return "fault", _short(error)
    except DecisionStoreError as error:
        return "error", _short(error)
    except Exception as error:  # noqa: BLE001 - anything else is reported as an error outcome
        return "error", _short(error)


def _classify(error: ChampionError) -> tuple[str, str]:
    message = str(error)
    if "did not take effect in the registry" in message:
        injected = isinstance(error.__cause__, InjectedFault)
        return ("fault", "injected") if injected else ("error", f"registry: {_short(error.__cause__)}")
    if message.startswith("nothing changed:"):
        return "error", f"audit: {message[:200]}"
    for text, reason in REFUSALS:
        if text in message:
            return "refused", reason
    return "refused", f"other: {message[:200]}"


def _short(error: BaseException | None) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}"[:300]


# supervisor --------------------------------------------------------------------------------------


@dataclass
class Incarnation:
    slot: int
    number: int
    process: multiprocessing.Process
    log: Path
    offset: int = 0
    tail: bytes = b""
    open_op: dict | None = None
    hung_at: float | None = None
    last_fault: dict | None = None
    kill_cause: str | None = None
    exitcode: int | None = None


@dataclass
class Tally:
    ops: Counter = field(default_factory=Counter)
    by_kind: dict = field(default_factory=lambda: defaultdict(Counter))
    refusals: Counter = field(default_factory=Counter)
    errors: Counter = field(default_factory=Counter)
    faults: Counter = field(default_factory=Counter)
    kills: Counter = field(default_factory=Counter)
    checks: Counter = field(default_factory=Counter)
    check_errors: int = 0
    lock: dict = field(default_factory=lambda: defaultdict(list))
    seen_done: set = field(default_factory=set)
    seen_pending: set = field(default_factory=set)
    problems: list = field(default_factory=list)
    crashes: list = field(default_factory=list)

    @property
    def finished(self) -> int:
        return sum(self.ops.values())

    def record(self, inc: Incarnation | None, record: dict) -> None:
        kind = record.get("t")
        if kind == "start" and inc is not None:
            inc.open_op, inc.hung_at = record, None
        elif kind == "end" and inc is not None:
            inc.open_op, inc.hung_at = None, None
            self._op(record["kind"], record["outcome"], record.get("reason", ""))
        elif kind == "fault" and inc is not None:
            inc.last_fault = record
            self.faults[f"{record['what']} {record['when']} {record['call']}"] += 1
            if record["what"] == "hang":
                inc.hung_at = time.monotonic()
        elif kind == "chk":
            self.checks[record["by"] if record["by"] == "checker" else "workers"] += 1
            if record["done"]:
                self.seen_done.add(record["done"])
            if record["newest"] == "pending":
                self.seen_pending.add(record["n"])
            for problem in record["problems"]:
                self.problems.append(f"snapshot by {record['by']}: {problem}")
        elif kind == "chk_err":
            self.check_errors += 1
        elif kind == "lock":
            self.lock[record["what"]].append((record["wait"], record["hold"]))

    def _op(self, kind: str, outcome: str, reason: str) -> None:
        self.ops[outcome] += 1
        self.by_kind[kind][outcome] += 1
        if outcome == "refused":
            self.refusals[reason] += 1
        elif outcome == "error":
            self.errors[reason] += 1

    def died(self, inc: Incarnation) -> None:
        if inc.exitcode == -signal.SIGKILL:
            cause = inc.kill_cause or ("self" if inc.last_fault and inc.last_fault["what"] == "kill"
                                       else "unknown")
            self.kills[cause] += 1
        elif inc.exitcode != 0:
            self.crashes.append(f"w{inc.slot}-{inc.number} exit {inc.exitcode}")
        if inc.open_op is not None:
            self._op(inc.open_op["kind"], "killed" if inc.exitcode == -signal.SIGKILL else "error",
                     f"exit {inc.exitcode}")
            inc.open_op = None


def _read_new(path: Path, inc: Incarnation | None, state: dict, tally: Tally) -> None:
    """Feed the records appended to `path` since the last read (a torn last line waits)."""
    try:
        with open(path, "rb") as handle:
            handle.seek(state["offset"])
            data = state["tail"] + handle.read()
    except FileNotFoundError:
        return
    state["offset"] += len(data) - len(state["tail"])
    *lines, state["tail"] = data.split(b"\n")
    for line in lines:
        if line.strip():
            try:
                tally.record(inc, json.loads(line))
            except (json.JSONDecodeError, KeyError) as error:
                tally.crashes.append(f"unreadable record in {path.name}: {error}")


def run(cfg: Config, out=print) -> int:
    """The whole benchmark; prints the summary, returns the exit code."""
    cfg.logs.mkdir(parents=True, exist_ok=True)
    if (cfg.home / "decisions.db").exists():
        raise SystemExit(f"{cfg.home} already holds a run; give an empty --home")
    ctx = multiprocessing.get_context("fork")
    rng = random.Random(f"{cfg.seed}-supervisor")
    out(_machine())
    out(f"run: workers={cfg.workers} ops={cfg.ops} kill_rate={cfg.kill_rate} fault_rate={cfg.fault_rate} "
        f"hang_rate={cfg.hang_rate} hang_timeout={cfg.hang_timeout}s seed={cfg.seed} "
        f"versions={cfg.n_versions} worker_checks={cfg.worker_checks} home={cfg.home}")
    sys.stdout.flush()
    sys.stderr.flush()

    started = time.monotonic()
    setup = ctx.Process(target=_setup, args=(cfg,))
    setup.start()
    setup.join(timeout=300)
    if setup.exitcode != 0:
        if setup.is_alive():
            setup.kill()
        out(f"set-up failed (exit {setup.exitcode}); see {cfg.logs / 'setup.err'}")
        out("changes_per_s=0.00 violations=0")
        return 2
    out(f"set-up: MLflow database, {cfg.n_versions} versions, rejections: {time.monotonic() - started:.1f}s")

    tally = Tally()
    parent = os.getpid()
    checker = ctx.Process(target=_checker, args=(cfg, parent))
    checker_state = {"offset": 0, "tail": b""}
    current: dict[int, Incarnation] = {}
    finished_incs: list[Incarnation] = []
    counts = Counter()

    def spawn(slot: int) -> None:
        counts[slot] += 1
        name = f"w{slot}-{counts[slot]}"
        process = ctx.Process(target=_worker, args=(cfg, slot, counts[slot], parent), name=name)
        process.start()
        current[slot] = Incarnation(slot, counts[slot], process, cfg.logs / f"{name}.jsonl")

    def kill(inc: Incarnation, cause: str) -> None:
        if inc.process.exitcode is None:
            inc.kill_cause = inc.kill_cause or cause
            with suppress(ProcessLookupError):
                os.kill(inc.process.pid, signal.SIGKILL)

    def read(inc: Incarnation) -> None:
        state = {"offset": inc.offset, "tail": inc.tail}
        _read_new(inc.log, inc, state, tally)
        inc.offset, inc.tail = state["offset"], state["tail"]

    def reap(inc: Incarnation) -> bool:
        if inc.process.exitcode is None:
            return False
        inc.process.join(timeout=1)
        inc.exitcode = inc.process.exitcode
        read(inc)
        tally.died(inc)
        finished_incs.append(inc)
        return True

    t0 = time.monotonic()
    checker.start()
    for slot in range(cfg.workers):
        spawn(slot)
    scheduled: list[float] = []
    last_finished, status = 0, "complete"
    while True:
        now = time.monotonic()
        for slot, inc in list(current.items()):
            read(inc)
            if reap(inc):
                del current[slot]
                if len(tally.crashes) > 3 * cfg.workers:
                    status = "too many crashed workers"
                elif tally.finished < cfg.ops:
                    spawn(slot)
            elif inc.hung_at is not None and now - inc.hung_at > cfg.hang_timeout:
                kill(inc, "hang")
        _read_new(cfg.logs / "checker.jsonl", None, checker_state, tally)
        for _ in range(tally.finished - last_finished):
            if rng.random() < cfg.kill_rate:
                scheduled.append(now + rng.uniform(0.0, 0.3))
        last_finished = tally.finished
        due = [t for t in scheduled if t <= now]
        scheduled = [t for t in scheduled if t > now]
        for _ in due:
            live = [inc for inc in current.values() if inc.process.exitcode is None]
            if live:
                kill(rng.choice(live), "random")
        if tally.finished >= cfg.ops or status != "complete":
            break
        if not checker.is_alive():
            status = f"the checker died (exit {checker.exitcode}); see {cfg.logs / 'checker.err'}"
            break
        if now - started > cfg.deadline:
            status = f"deadline of {cfg.deadline:.0f}s reached"
            break
        time.sleep(0.01)

    # stop: workers finish their current operation; stragglers are killed
    cfg.stop_file.touch()
    stop_by = time.monotonic() + 30
    while current and time.monotonic() < stop_by:
        for slot, inc in list(current.items()):
            read(inc)
            if reap(inc):
                del current[slot]
            elif inc.hung_at is not None and time.monotonic() - inc.hung_at > cfg.hang_timeout:
                kill(inc, "hang")
        time.sleep(0.01)
    for inc in current.values():
        kill(inc, "stop")
        inc.process.join(timeout=10)
        reap(inc)
    elapsed = time.monotonic() - t0
    checker.join(timeout=LOCK_WAIT_S + 10)
    if checker.exitcode is None:
        checker.kill()
        checker.join(timeout=10)
    _read_new(cfg.logs / "checker.jsonl", None, checker_state, tally)

    # settle and replay (the supervisor opens the databases only now: no more forks)
    violations = list(tally.problems)
    store, registry = DecisionStore(url=cfg.store_url), MlflowRegistry(tracking_uri=cfg.mlflow_uri)
    before = store.changes(MODEL)
    done_before = sum(c["status"] == "done" for c in before)
    pending_before = sum(c["status"] == "pending" for c in before)
    ledger = ChampionLedger(store, registry)
    try:
        ledger.rollback(MODEL, "bench", "settle", expected_from="settle-only")
    except ChampionError as error:
        if str(error).startswith("nothing changed:"):
            violations.append(f"the settling call failed verification: {error}")
    changes = store.changes(MODEL)
    try:
        rows = store.verify_chain()
    except DecisionStoreError as error:
        rows = 0
        violations.append(f"the chain does not verify: {error}")
    final_alias = registry.alias_version(MODEL)
    violations += replay(changes, store.events(MODEL), _outcome_rows(cfg), store.incidents(),
                         final_alias, {str(v) for v in range(1, cfg.n_versions + 1)})

    rate = done_before / elapsed if elapsed > 0 else 0.0
    incidents = Counter(i["kind"] for i in store.incidents())
    statuses = Counter(c["status"] for c in changes)
    out(f"ops by outcome: {_counts(tally.ops, OUTCOMES)} (total {tally.finished})")
    for kind in KINDS:
        out(f"  {kind:<19} {_counts(tally.by_kind[kind], OUTCOMES)}")
    out(f"refusals by reason: {_counts(tally.refusals)}")
    if tally.errors:
        out(f"errors: {_counts(tally.errors)}")
    out(f"kills: total={sum(tally.kills.values())} ({_counts(tally.kills)}); ops interrupted by a kill="
        f"{tally.ops['killed']}; worker processes started={sum(counts.values())}")
    out(f"registry faults drawn: {_counts(tally.faults)}")
    if tally.crashes:
        out(f"crashes: {'; '.join(tally.crashes[:10])}")
        if status == "complete":
            status = f"{len(tally.crashes)} worker(s) crashed; see {cfg.logs}/*.err"
    out(f"changes: recorded={len(changes)} done={statuses['done']} abandoned={statuses['abandoned']} "
        f"pending before settle={pending_before} pending left={statuses['pending']}; "
        f"log rows verified={rows}; incidents: {_counts(incidents)}")
    out(f"checks under the lock: checker={tally.checks['checker']} workers={tally.checks['workers']} "
        f"errors={tally.check_errors}; done changes seen as the newest done by a check: "
        f"{len(tally.seen_done & set(range(1, done_before + 1)))}/{done_before}; pending states seen: "
        f"{len(tally.seen_pending)}")
    for what in ("op", "check"):
        out(f"champion lock, {what}s: {_lock_stats(tally.lock[what], elapsed)}")
    out(f"final alias {_v(final_alias)}; elapsed={elapsed:.1f}s (workers start to stop) done changes="
        f"{done_before} changes_per_s={rate:.2f}")
    for problem in violations:
        out(f"VIOLATION: {problem}")
    code = 1 if violations else 0
    if status != "complete":
        out(f"run incomplete: {status}")
        code = code or 2
    out(f"changes_per_s={rate:.2f} violations={len(violations)}")
    return code


def _outcome_rows(cfg: Config) -> list[dict] | None:
    """Every outcome row of MODEL, read from the file itself (`changes()` keeps one per change)."""
    try:
        with sqlite3.connect(f"file:{cfg.home / 'decisions.db'}?mode=ro", uri=True) as conn:
            rows = conn.execute("SELECT id, payload FROM decision_log WHERE record = 'outcome' "
                                "AND model_name = ? ORDER BY id", (MODEL,)).fetchall()
    except sqlite3.Error:
        return None
    return [{"id": row_id, **json.loads(payload)} for row_id, payload in rows]


def _lock_stats(samples: list[tuple[float, float]], elapsed: float) -> str:
    if not samples:
        return "none"
    waits = sorted(w for w, _ in samples)
    holds = sorted(h for _, h in samples)

    def p95(values: list[float]) -> float:
        return values[min(len(values) - 1, int(0.95 * len(values)))]

    return (f"n={len(samples)} wait median={median(waits) * 1000:.0f}ms p95={p95(waits) * 1000:.0f}ms; "
            f"held median={median(holds) * 1000:.0f}ms p95={p95(holds) * 1000:.0f}ms, "
            f"{sum(holds) / elapsed:.0%} of the elapsed time")


def _counts(counter: Counter, order: tuple[str, ...] | None = None) -> str:
    keys = list(order) if order else sorted(counter, key=lambda k: (-counter[k], k))
    return " ".join(f"{k}={counter[k]}" for k in keys) or "none"


def _machine() -> str:
    model = "?"
    memory = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                memory = f"{int(line.split()[1]) / 2**20:.1f} GiB"
                break
    except OSError:
        pass
    return (f"machine: nproc={os.cpu_count()} cpu={model} ram={memory} "
            f"platform={platform.platform()} python={platform.python_version()}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--ops", type=int, default=1000, help="operation budget, killed ones included")
    parser.add_argument("--kill-rate", type=float, default=0.1,
                        help="random supervisor kills per finished operation, and self-kill "
                        "probability per registry write call")
    parser.add_argument("--fault-rate", type=float, default=0.05, help="raise, per registry write call")
    parser.add_argument("--hang-rate", type=float, default=0.01, help="hang, per registry write call")
    parser.add_argument("--hang-timeout", type=float, default=0.5,
                        help="seconds before a hung worker is killed")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--versions", type=int, default=0, help="registered versions (0: max(30, ops/4))")
    parser.add_argument("--no-worker-checks", action="store_true",
                        help="only the checker process checks snapshots")
    parser.add_argument("--deadline", type=float, default=900.0, help="seconds; the run stops by itself")
    parser.add_argument("--home", type=Path, default=None,
                        help="an empty directory (default: a new temp dir)")
    args = parser.parse_args(argv)
    pin_threads()
    # imported before the workers are forked, so that a restart costs a fork, not an import
    import mlflow.store.model_registry.sqlalchemy_store  # noqa: F401
    import mlflow.store.tracking.sqlalchemy_store  # noqa: F401
    from mlflow import MlflowClient  # noqa: F401

    home = (args.home or Path(tempfile.mkdtemp(prefix="ledger-bench-"))).resolve()
    cfg = Config(home=home, workers=args.workers, ops=args.ops, kill_rate=args.kill_rate,
                 fault_rate=args.fault_rate, hang_rate=args.hang_rate, hang_timeout=args.hang_timeout,
                 seed=args.seed, versions=args.versions, worker_checks=not args.no_worker_checks,
                 deadline=args.deadline)
    return run(cfg, out=lambda line: print(line, flush=True))


if __name__ == "__main__":
    sys.exit(main())
