"""Faster commits to the local Dagster instance's SQLite files, in the processes that load
the code location (the code server, run workers, step processes, tests and benchmarks).

Dagster's SQLite storage opens a new connection for every write and closes it after
(`SqliteEventLogStorage._connect`: a fresh engine with `NullPool`). The files are in WAL
mode, and when the last connection to a WAL database closes, SQLite checkpoints the log and
fsyncs: 0.8 ms per event on this machine's disk when it is quiet, about 10 ms when other
processes keep it busy (bench/instance_sqlite.py; bench/RESULTS.md, "SQLite commits"). On the
instance's own files only:

- `synchronous=NORMAL` on all of them (`history/runs.db`, `history/runs/*.db`,
  `schedules/schedules.db`), SQLite's recommended setting for WAL: a commit survives a crash
  of the process; after a power loss the last commits may be rolled back, never corrupted.
- one idle connection held per process on the shared files (`history/runs.db`,
  `history/runs/index.db`, `schedules/schedules.db`), so a close there is not the last one
  and does not checkpoint (SQLite still does every 1000 pages of log). Not on a run's own
  log (`history/runs/<run id>.db`): with Dagster's own event log the UI follows a live run by
  watching that file change, which the checkpoint on close does (the local instance's event
  log, unified_assets/instance_event_log.py, keeps run logs open itself and watches their
  `-wal` too). Held connections are closed before the process forks
  (SQLite's locks do not survive a fork), and a failure here never fails Dagster's write.

Production keeps its instance in Postgres (deploy/stack), where this does nothing; MLflow's
and the decision store's SQLite files are never touched; the daemon and the webserver, which
do not load the code location, commit as Dagster does. `UNIFIED_AI_SQLITE_TUNING=off` turns
it off. No library offers this for Dagster's storage; SQLAlchemy's `connect` event is the
documented hook.
"""

from __future__ import annotations

import contextlib
import os
import re
import sqlite3
import threading
from collections import OrderedDict
from pathlib import Path

# The instance's layout under its base directory (DAGSTER_HOME or a temporary instance).
INSTANCE_FILES = re.compile(
    r"[/\\](?:history[/\\]runs(?:[/\\][^/\\]+)?|schedules[/\\]schedules)\.db$")
SHARED_FILES = re.compile(
    r"[/\\](?:history[/\\]runs(?:[/\\]index)?|schedules[/\\]schedules)\.db$")
TUNING_ENV = "UNIFIED_AI_SQLITE_TUNING"
KEEP_OPEN = 16  # shared files held (3 per instance), newest used first

_kept: OrderedDict[str, tuple[sqlite3.Connection, int]] = OrderedDict()  # path -> (conn, inode)
_lock = threading.Lock()
_inherited: list[object] = []  # a child's copies of connections opened during the fork
_installed = False


def _database_file(connection: sqlite3.Connection) -> str:
    row = connection.execute("PRAGMA database_list").fetchone()
    return row[2] if row and row[2] else ""


def _close(connection: sqlite3.Connection) -> None:
    """The last close of a file checkpoints its log, unless the file was deleted or replaced
    under its name since (SQLite checks: it then touches neither file nor log)."""
    with contextlib.suppress(sqlite3.Error):
        connection.close()


def _keep_open(path: str) -> None:
    try:
        inode = os.stat(path).st_ino
    except FileNotFoundError:
        return
    with _lock:
        if path in _kept:
            if _kept[path][1] == inode:
                _kept.move_to_end(path)
                return
            _close(_kept.pop(path)[0])  # replaced under the same name: hold the new file
        # mode=rw: a file deleted since the stat is not created again, empty.
        keeper = sqlite3.connect(f"{Path(path).as_uri()}?mode=rw", uri=True, timeout=30,
                                 check_same_thread=False)
        # A read maps the WAL index: from then on this connection counts as open to SQLite.
        keeper.execute("SELECT count(*) FROM sqlite_master").fetchone()
        _kept[path] = (keeper, inode)
        while len(_kept) > KEEP_OPEN:
            _close(_kept.popitem(last=False)[1][0])


def tune_connection(connection: object) -> bool:
    """Applies the settings to a new DBAPI connection when it is to one of the instance's WAL
    files. Returns whether it did; a failure leaves the connection as Dagster made it."""
    if not isinstance(connection, sqlite3.Connection):
        return False
    try:
        path = _database_file(connection)
        if not INSTANCE_FILES.search(path):
            return False
        if connection.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
            return False  # a file Dagster has not initialised yet: its next connection is
        connection.execute("PRAGMA synchronous=NORMAL")
        if SHARED_FILES.search(path):
            _keep_open(path)
    except (sqlite3.Error, OSError):
        return False
    return True


def release_all() -> None:
    """Closes every held connection. Before a fork (`install`): none is open across it (a
    child would inherit SQLite's lock state for the file and could lose a commit); the
    process opens them again on use."""
    with _lock:
        while _kept:
            _close(_kept.popitem()[1][0])


def _reset_in_child() -> None:
    """In a child: a fresh lock, and any connection another thread opened between
    `release_all` and the fork kept referenced, never used or closed."""
    global _kept, _lock
    _inherited.append(_kept)
    _kept, _lock = OrderedDict(), threading.Lock()


def install() -> None:
    """Once per process: every SQLAlchemy connection goes through `tune_connection`."""
    global _installed
    if _installed or os.environ.get(TUNING_ENV, "on").lower() in ("off", "0", "false", "no"):
        return
    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    event.listen(Engine, "connect", lambda connection, _record: tune_connection(connection))
    os.register_at_fork(before=release_all, after_in_child=_reset_in_child)
    _installed = True


def kept_files() -> list[str]:
    """The files this process holds an idle connection to (for tests and diagnostics)."""
    with _lock:
        return list(_kept)
