"""Faster commits to the local Dagster instance's SQLite files, in the processes that load
the code location (the code server, run workers, step processes, tests and benchmarks).

Dagster's SQLite storage opens a new connection for every write and closes it after
(`SqliteEventLogStorage._connect`: a fresh engine with `NullPool`). The files are in WAL
mode, and when the last connection to a WAL database closes, SQLite checkpoints the log and
fsyncs: 0.8 ms per event on this machine's disk when it is quiet, about 10 ms when other
processes keep it busy (bench/instance_sqlite.py; bench/RESULTS.md, "SQLite commits"). Two
settings, on the instance's own files only (`history/runs.db`, `history/runs/*.db`,
`schedules/schedules.db`):

- `synchronous=NORMAL`, SQLite's recommended setting for WAL: a commit survives a crash of
  the process; after a power loss the last commits may be rolled back, never corrupted.
  Production keeps its instance in Postgres (deploy/stack), where this module does nothing.
- one idle connection per file kept open by this process (at most `KEEP_OPEN`), so a
  connection's close is not the last one and does not checkpoint. SQLite still checkpoints
  on its own every 1000 pages of log.

Nothing else (MLflow's, the decision store's SQLite files) is touched.
`UNIFIED_AI_SQLITE_TUNING=off` turns both off (Dagster's own behaviour), e.g. to compare.
No library offers this for Dagster's storage; SQLAlchemy's `connect` event is the
documented hook.
"""

from __future__ import annotations

import contextlib
import os
import re
import sqlite3
import threading
from collections import OrderedDict

# The instance's layout under its base directory (DAGSTER_HOME or a temporary instance).
INSTANCE_FILES = re.compile(
    r"[/\\](?:history[/\\]runs(?:[/\\][^/\\]+)?|schedules[/\\]schedules)\.db$")
TUNING_ENV = "UNIFIED_AI_SQLITE_TUNING"
KEEP_OPEN = 16  # files with an idle connection held, newest used first; run shards rotate out

_kept: OrderedDict[str, tuple[sqlite3.Connection, int]] = OrderedDict()  # path -> (conn, inode)
_lock = threading.Lock()
_inherited: list[object] = []
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
        keeper = sqlite3.connect(path, check_same_thread=False)
        # A read maps the WAL index: from then on this connection counts as open to SQLite.
        keeper.execute("SELECT count(*) FROM sqlite_master").fetchone()
        _kept[path] = (keeper, inode)
        while len(_kept) > KEEP_OPEN:
            _close(_kept.popitem(last=False)[1][0])


def tune_connection(connection: object) -> bool:
    """Applies both settings to a new DBAPI connection when it is to one of the instance's
    WAL files. Returns whether it did."""
    if not isinstance(connection, sqlite3.Connection):
        return False
    path = _database_file(connection)
    if not INSTANCE_FILES.search(path):
        return False
    if connection.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
        return False  # a file Dagster has not initialised yet: its next connection is tuned
    connection.execute("PRAGMA synchronous=NORMAL")
    _keep_open(path)
    return True


def _forget_in_child() -> None:
    """A forked child never uses or closes its parent's connections (SQLite forbids both:
    a close would drop this process's locks on the file): they stay referenced, unused, and
    the child keeps its own."""
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
    os.register_at_fork(after_in_child=_forget_in_child)
    _installed = True


def kept_files() -> list[str]:
    """The files this process holds an idle connection to (for tests and diagnostics)."""
    with _lock:
        return list(_kept)
