"""The local instance's event log: Dagster's SQLite event log, reusing its engines.

`SqliteEventLogStorage._connect` builds a new SQLAlchemy engine for every read and write and
disposes it after (`NullPool`). A run over 100 batches makes about 3,700 such connections
to the shared `index.db` alone (five check results, two materializations and their reads per
batch), and each costs an engine, a connect, PRAGMAs and a close: on this machine more than
the batch's own work (bench/RESULTS.md, "Where a landing's time goes"). This subclass keeps
one engine per file (`index.db`, shared by every run, and the latest runs' own logs), each
with a pooled connection, reused.

The Dagster UI follows a live run by watching its log file change (`watch`). Dagster's
storage closes its connection after every write, and that last close checkpoints the WAL
into the file, which is what the UI saw change. Here a write stays in the file's `-wal`
until SQLite checkpoints it, so `watch` here follows both files.

Dagster hands the planned events of a new run and the materializations of one partitioned
output (every batch of a range run) to `store_event_batch` when `DAGSTER_EVENT_BATCH_SIZE`
is above 0; this storage sets it (unless set) and writes such a batch with one transaction
on the run's log and one on `index.db` instead of two per event (an ingestion run of 100
batches: 10.4 s and 9.0 s against 11.7 s and 11.3 s in process, bench/RESULTS.md). An asset
check event's two index writes (its mirror, its execution record), which Dagster commits
apart, are one transaction here, alone or in a batch (`_one_index_write`).

Each run has its own log file, which Dagster creates with its whole schema and a migration
stamp; here a new run's log is a copy of an empty one Dagster's own `_initdb` made once in
this process (the same bytes every time; 0.08-0.10 s a run saved, bench/RESULTS.md). A log
that exists and carries a migration stamp is taken as initialised, as Dagster's `_initdb`
takes it, without reading alembic's scripts for their head (0.03 s in each process that
opens the logs: every run and step process).

Everything else (schema, migrations, what is written and when, locking through
`_db_lock`) is Dagster's. An engine is replaced when its file was deleted or replaced
(`wipe`, a reset home), and no pooled connection crosses a fork. Configured in
deploy/local/dagster.yaml as the instance's `event_log_storage`; the rest of the local
instance is Dagster's default SQLite storage. Subclassing is the documented way to configure
a storage (`module`/`class` in dagster.yaml); no library offers this. Without a `base_dir`
it uses the instance's own folder, found when the instance registers itself.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import threading
import weakref
from collections import OrderedDict, defaultdict
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from dagster._config import Field, StringSource
from dagster._core.errors import DagsterInvariantViolationError
from dagster._core.event_api import EventHandlerFn
from dagster._core.events import ASSET_CHECK_EVENTS, ASSET_EVENTS
from dagster._core.events.log import EventLogEntry
from dagster._core.instance import DagsterInstance
from dagster._core.storage.event_log.sqlite.sqlite_event_log import (
    INDEX_SHARD_NAME,
    SqliteEventLogStorage,
    SqliteEventLogStorageWatchdog,
)
from dagster._core.storage.sql import create_engine
from dagster._core.storage.sqlalchemy_compat import db_result
from dagster._core.storage.sqlite import SQLITE_BUSY_TIMEOUT_SECONDS
from dagster._serdes import ConfigurableClassData
from sqlalchemy import text
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DBAPIError
from sqlalchemy.pool import NullPool, QueuePool
from watchdog.events import FileSystemEvent
from watchdog.observers import Observer

RECHECK_S = 0.25  # a watched run's log is read again this long after each change
RUN_ENGINES_KEPT = 8  # engines of run logs kept (a process writes one or two runs at a time)
# Read by Dagster on every event: above 0, batches reach `store_event_batch` (see the module).
BATCH_ENV, BATCH_SIZE = "DAGSTER_EVENT_BATCH_SIZE", "1000"

_storages: weakref.WeakSet[ReusingSqliteEventLogStorage] = weakref.WeakSet()
_inherited: list[object] = []  # a child's copies of the parent's engines: never used or closed
# An empty run log made by Dagster's own `_initdb` (`_from_template`), once per process.
_template: bytes | None = None
_template_lock = threading.Lock()


def _stamped(engine: Engine) -> bool:
    """The file carries an alembic migration stamp (`_initdb` would leave it as it is)."""
    try:
        with engine.connect() as conn:
            return conn.execute(text("SELECT version_num FROM alembic_version")).first() \
                is not None
    except DBAPIError:  # no such table, or not a database
        return False


class ReusingSqliteEventLogStorage(SqliteEventLogStorage):
    """Dagster's SQLite event log with one engine per file, kept (see the module)."""

    def __init__(self, base_dir: str | None = None,
                 inst_data: ConfigurableClassData | None = None):
        """`base_dir` None: the instance's own event log folder, known once the instance
        registers itself (before any read or write)."""
        self._engines: OrderedDict[str, tuple[Engine, tuple[int, int]]] = OrderedDict()
        self._engines_lock = threading.RLock()
        self._tables: set[str] = set()  # tables seen in index.db (migrations only add tables)
        self._inst_data = inst_data
        self._instance_weakref = None
        self._obs = None
        self._held = threading.local()  # this thread's open index transaction (`_one_index_write`)
        if base_dir is not None:
            super().__init__(base_dir, inst_data=inst_data)
            self._db_lock = threading.RLock()  # see `_one_index_write`
        _storages.add(self)
        os.environ.setdefault(BATCH_ENV, BATCH_SIZE)

    @classmethod
    def config_type(cls) -> dict:
        return {"base_dir": Field(StringSource, is_required=False)}

    @classmethod
    def from_config_value(  # type: ignore[override]
        cls, inst_data: ConfigurableClassData | None, config_value: Mapping[str, Any]
    ) -> ReusingSqliteEventLogStorage:
        return cls(config_value.get("base_dir"), inst_data=inst_data)

    def register_instance(self, instance: DagsterInstance) -> None:
        if not hasattr(self, "_base_dir"):
            # Where Dagster's default storage keeps the instance's event logs (the instance
            # folder, e.g. DAGSTER_HOME): switching storage keeps every run's history, and
            # any way of opening the instance finds the same files.
            super().__init__(os.path.join(instance.root_directory, "history", "runs", ""),
                             inst_data=self._inst_data)
            self._db_lock = threading.RLock()  # see `_one_index_write`
        super().register_instance(instance)

    def _engine(self, shard: str) -> Engine:
        """The shard's engine, created (and the file initialised) on first use or when the
        file was deleted or replaced since."""
        with self._engines_lock:
            return self._kept_or_new_engine(shard)

    def _kept_or_new_engine(self, shard: str) -> Engine:  # under _engines_lock
        path = self.path_for_shard(shard)
        # A file deleted while a pooled connection holds it keeps its inode allocated, so a
        # file put in its place has another one; without a held connection the engine opens
        # the path again anyway.
        inode = _identity(path)
        kept = self._engines.get(shard)
        if kept is not None and inode is not None and kept[1] == inode:
            self._engines.move_to_end(shard)
            return kept[0]
        if kept is not None:  # deleted or replaced under its name: start on the new file
            self._engines.pop(shard)[0].dispose()
            self._initialized_dbs.discard(shard)
            if shard == INDEX_SHARD_NAME:
                self._tables.clear()
        if shard != INDEX_SHARD_NAME and inode is None and self._from_template(path):
            self._initialized_dbs.add(shard)
            inode = _identity(path)
        engine = create_engine(
            self.conn_string_for_shard(shard), poolclass=QueuePool, pool_size=1, max_overflow=2,
            # Pooled connections move between the threads that take `_db_lock`.
            connect_args={"timeout": SQLITE_BUSY_TIMEOUT_SECONDS, "check_same_thread": False},
        )
        if shard not in self._initialized_dbs or inode is None:
            # Dagster's `_initdb` leaves a log with a migration stamp as it is, but first reads
            # alembic's migration scripts for their head (0.03-0.05 s, for index.db and again
            # for a run's log in every run and step process): a stamped log is taken as
            # initialised here, as `_initdb` takes it, without reading them.
            if inode is None or not _stamped(engine):
                self._initdb(engine)
            self._initialized_dbs.add(shard)
        self._engines[shard] = (engine, _identity(path) or (0, 0))
        runs = [name for name in self._engines if name != INDEX_SHARD_NAME]
        for name in runs[:-RUN_ENGINES_KEPT]:
            self._engines.pop(name)[0].dispose()
        return engine

    def _from_template(self, path: str) -> bool:
        """Create a new run's log as a copy of an empty one, initialised once per process:
        Dagster creates every run's schema and stamps its migration (about 0.09 s a run on
        this machine, bench/RESULTS.md) for a file that is the same every time. False when
        the file appeared meanwhile (another process made it) or cannot be linked (a file
        system without hard links): Dagster then creates or checks it as usual."""
        global _template
        with _template_lock:
            if _template is None:
                with tempfile.TemporaryDirectory() as folder:
                    made = os.path.join(folder, "run.db")
                    engine = create_engine(f"sqlite:///{made}", poolclass=NullPool)
                    try:
                        self._initdb(engine)
                    finally:
                        engine.dispose()
                    _template = Path(made).read_bytes()
        staged = f"{path}.{os.getpid()}.{threading.get_ident()}.new"
        try:
            Path(staged).write_bytes(_template)
            os.link(staged, path)  # never replaces a log another process created meanwhile
        except OSError:
            return False
        finally:
            Path(staged).unlink(missing_ok=True)
        return True

    @contextmanager
    def _connect(self, shard: str) -> Iterator[Connection]:  # type: ignore[override]
        held = getattr(self._held, "index", None)
        if held is not None and shard == INDEX_SHARD_NAME:
            yield held  # Dagster's own index writes, inside `_one_index_write`
            return
        with self._db_lock:
            engine = self._engine(shard)
            with engine.connect() as conn, conn.begin():
                yield conn

    @contextmanager
    def _one_index_write(self) -> Iterator[Connection]:
        """One transaction on index.db that every index write of this thread joins until the
        block ends (Dagster's check-event writes open a connection, and commit, each). The
        lock is reentrant: a write to a run's log from inside the block would not deadlock."""
        with self._connect(INDEX_SHARD_NAME) as conn:
            self._held.index = conn
            try:
                yield conn
            finally:
                self._held.index = None

    def store_event(self, event: EventLogEntry) -> None:
        """As Dagster's, except that an asset check event's two index writes (its mirror and
        its execution record) are one transaction, not two."""
        if _check_event(event):
            self._store_mirrored([event])
        else:
            super().store_event(event)

    def store_event_batch(self, events: Sequence[EventLogEntry]) -> None:
        """Consecutive asset and asset check events of one run written together, in order
        (as `store_event` writes each: the run's log, then its mirror, tags, asset record or
        check execution in `index.db`); any other event as Dagster's `store_event` writes it."""
        group: list[EventLogEntry] = []
        for entry in events:
            mirrored = _asset_event(entry) or _check_event(entry)
            if mirrored and (not group or group[0].run_id == entry.run_id):
                group.append(entry)
                continue
            self._store_mirrored(group)
            group = [entry] if mirrored else []
            if not mirrored:
                super().store_event(entry)
        self._store_mirrored(group)

    def _store_mirrored(self, group: list[EventLogEntry]) -> None:
        """Asset and check events of one run: one transaction on the run's log, one on the
        index (a lone asset event: Dagster's `store_event`)."""
        if not group or (len(group) == 1 and _asset_event(group[0])):
            for entry in group:
                super().store_event(entry)
            return
        statements = [self.prepare_insert_event(entry) for entry in group]
        with self.run_connection(group[0].run_id) as conn:
            for statement in statements:
                conn.execute(statement)
        try:
            with self._one_index_write() as conn:
                ids = []
                for statement in statements:
                    with db_result(conn, statement) as result:
                        ids.append(result.inserted_primary_key[0])
                assets = [(e, i) for e, i in zip(group, ids, strict=True) if _asset_event(e)]
                if assets:
                    self._store_asset_event_tags(conn, [e for e, _ in assets],
                                                 [i for _, i in assets])
                for entry, event_id in zip(group, ids, strict=True):
                    if _asset_event(entry):
                        self._store_asset_event(conn, entry, event_id)
                    else:
                        self.store_asset_check_event(entry, event_id)
        except Exception:  # noqa: BLE001 - rolled back: mirrored one by one, as store_event does
            if len(group) == 1:
                raise  # Dagster's store_event raises too, with the run's log already written
            # The run's log already holds them: an error raised here would make Dagster store
            # the whole batch again, each event a second time.
            for entry, statement in zip(group, statements, strict=True):
                self._mirror_one(entry, statement)

    def _mirror_one(self, entry: EventLogEntry, statement: Any) -> None:
        """The index half of Dagster's `SqliteEventLogStorage.store_event` for one asset or
        check event."""
        with self._one_index_write() as conn:
            with db_result(conn, statement) as result:
                event_id = result.inserted_primary_key[0]
            if _check_event(entry):
                self.store_asset_check_event(entry, event_id)
                return
            if event_id is None:
                raise DagsterInvariantViolationError(
                    "Cannot store asset event tags for null event id.")
            self._store_asset_event_tags(conn, [entry], [event_id])
            self._store_asset_event(conn, entry, event_id)

    def has_table(self, table_name: str) -> bool:
        """Dagster asks before most index writes and reads (5 times per batch for the check
        results alone), each time on a new engine; here on the kept one, and a table once
        seen is remembered."""
        if table_name in self._tables:
            return True
        engine = self._engine(INDEX_SHARD_NAME)
        held = getattr(self._held, "index", None)  # asked inside `_one_index_write`
        with contextlib.nullcontext(held) if held is not None else engine.connect() as conn:
            found = bool(engine.dialect.has_table(conn, table_name))
        if found:
            self._tables.add(table_name)
        return found

    def watch(self, run_id: str, cursor: str | None, callback: EventHandlerFn) -> None:
        """As Dagster's, following the run's log and its `-wal` (see the module)."""
        if not self._obs:
            self._obs = Observer()
            self._obs.start()
        handler = RunLogWatchdog(self, run_id, callback, cursor)
        self._watchers[run_id][callback] = (
            handler, self._obs.schedule(handler, self._base_dir, recursive=True))

    def close_connections(self) -> None:
        """Closes the pooled connections now (before a fork, on dispose); engines reconnect
        on their next use."""
        with self._engines_lock:
            for engine, _ in self._engines.values():
                engine.dispose()

    def forget_in_child(self) -> None:
        """In a forked child: the parent's engines (and any connection a thread had checked
        out during the fork) are kept referenced, never used or closed; new ones are made."""
        _inherited.append(self._engines)
        self._engines, self._engines_lock = OrderedDict(), threading.RLock()
        # A lock another thread held at the fork would never be released here, and the
        # parent's file watchers did not cross the fork.
        self._db_lock = threading.RLock()
        self._obs, self._watchers = None, defaultdict(dict)
        self._held = threading.local()

    def dispose(self) -> None:
        super().dispose()
        self.close_connections()
        self._engines.clear()


class RunLogWatchdog(SqliteEventLogStorageWatchdog):
    """Dagster's watcher of one run's log, told about changes to the log's `-wal` too.

    A commit's pages reach the `-wal` (the change seen) just before the commit is visible to
    readers (in the `-shm`, which no file event reports). So each change is read at once and
    again `RECHECK_S` later: the run's last event is never left unread until the next change.
    """

    def __init__(self, storage: SqliteEventLogStorage, run_id: str,
                 callback: EventHandlerFn, cursor: str | None):
        super().__init__(storage, run_id, callback, cursor)
        self._reading = threading.Lock()
        self._recheck: threading.Timer | None = None

    @property
    def patterns(self) -> list[str]:
        return [self._log_path, f"{self._log_path}-wal"]

    def on_created(self, event: FileSystemEvent) -> None:
        self._changed()

    def on_modified(self, event: FileSystemEvent) -> None:
        self._changed()

    def _changed(self) -> None:
        self._read()
        recheck = threading.Timer(RECHECK_S, self._read)
        recheck.daemon = True
        previous, self._recheck = self._recheck, recheck
        if previous is not None:
            previous.cancel()
        recheck.start()

    def _read(self) -> None:
        with self._reading:  # one read at a time: each continues from the last one's cursor
            self._process_log()


def _asset_event(entry: EventLogEntry) -> bool:
    return entry.is_dagster_event and entry.dagster_event_type in ASSET_EVENTS


def _check_event(entry: EventLogEntry) -> bool:
    return entry.is_dagster_event and entry.dagster_event_type in ASSET_CHECK_EVENTS


def _identity(path: str) -> tuple[int, int] | None:
    try:
        stat = os.stat(path)
    except FileNotFoundError:
        return None
    return stat.st_dev, stat.st_ino


def _before_fork() -> None:
    for storage in list(_storages):
        storage.close_connections()


def _in_child() -> None:
    global _template_lock
    _template_lock = threading.Lock()  # a thread of the parent may have held it at the fork
    for storage in list(_storages):
        storage.forget_in_child()


os.register_at_fork(before=_before_fork, after_in_child=_in_child)
