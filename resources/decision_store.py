"""Append-only, hash-chained record of approvals, champion changes and incidents (any
SQLAlchemy URL: sqlite locally, PostgreSQL in production).

Every record is one row of `decision_log` whose `hash` is an HMAC (keyed with the ledger
key) of its content and the hash of the row before it, so an edited, deleted or reordered
row breaks the chain at that row and `verify_chain` names the first bad one; without the
key nobody who can write to the database can append a row that verifies. The key is a
secret (`dg.EnvVar` in production); locally it is a 0600 file beside the sqlite file.
`prev_hash` is unique: the log is one line, never a fork, even if two writers race. The
interface offers appends and reads only.

The schema is Alembic migrations (decision_store_migrations/), applied when a store is
opened (`upgrade_decision_store`): a schema change keeps every row and so the chain.

Champion changes are serialized by `champion_lock`: an OS file lock beside a sqlite file, a
session advisory lock on PostgreSQL. Both are released by the operating system or the
server when the holder dies (SIGKILL included), so a killed process never wedges the lock.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import dagster as dg
from pydantic import PrivateAttr

from resources.incident_kinds import INCIDENT_KINDS

GENESIS = "0" * 64
LOCK_TIMEOUT_S = 60.0
# record kinds in the log
EVENT, CHANGE, OUTCOME, INCIDENT = "event", "change", "outcome", "incident"
TABLE = "decision_log"
# The schema's Alembic scripts, inside the package (shipped as package data).
MIGRATIONS = Path(__file__).with_name("decision_store_migrations")
# The revision a store made before migrations has: its table, no alembic_version.
FIRST_REVISION = "0001"
MIGRATION_LOCK = zlib.crc32(b"unified-ai:decision-store:migrate")  # PostgreSQL advisory lock key


class ChangeConflict(RuntimeError):
    """Another champion change was recorded first (a concurrent promotion or rollback)."""


class DecisionStoreError(RuntimeError):
    """The store cannot be read or written; the message names it and what to do."""


class AuditError(DecisionStoreError):
    """The log fails verification: a row was edited, deleted, reordered or the file replaced."""


def _now() -> datetime:
    return datetime.now(UTC)


def _iso(value: datetime | None) -> str | None:
    return value.astimezone(UTC).isoformat() if value is not None else None


def _canonical(payload: dict) -> str:
    return json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)


def chain_hash(key: bytes, prev_hash: str, payload_json: str) -> str:
    return hmac.new(key, f"{prev_hash}\n{payload_json}".encode(), hashlib.sha256).hexdigest()


class DecisionStore(dg.ConfigurableResource):
    """`url`: e.g. sqlite:////path/decisions.db locally, postgresql://... in production."""

    url: str
    chain_key: str | None = None  # hex; None: the key file beside a sqlite store
    _engine: Any = PrivateAttr(default=None)
    _table: Any = PrivateAttr(default=None)
    _key: bytes | None = PrivateAttr(default=None)

    # setup -----------------------------------------------------------------------------

    @property
    def _sqlite_path(self) -> Path | None:
        if not self.url.startswith("sqlite:///"):
            return None
        return Path(self.url.removeprefix("sqlite:///"))

    def _setup(self):
        if self._engine is not None:
            return self._engine, self._table
        import sqlalchemy as sa

        # The columns the queries use; the schema itself (constraints, indexes) is the
        # migrations' (decision_store_migrations/versions), applied by upgrade_decision_store.
        table = sa.Table(
            TABLE, sa.MetaData(),
            sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
            sa.Column("record", sa.String(20), nullable=False),  # event/change/outcome/incident
            sa.Column("model_name", sa.String(200)),
            sa.Column("version", sa.String(50)),  # event: the version decided on
            sa.Column("change_seq", sa.Integer),  # change: its number per model
            sa.Column("payload", sa.Text, nullable=False),  # canonical JSON, what is hashed
            sa.Column("prev_hash", sa.String(64), nullable=False, unique=True),
            sa.Column("hash", sa.String(64), nullable=False),
        )
        engine = _create_engine(self.url)
        with self._guard("open"):
            if self._sqlite_path is not None:
                self._sqlite_path.parent.mkdir(parents=True, exist_ok=True)
            upgrade_decision_store(self.url, engine=engine)
            with engine.connect() as conn:
                empty = conn.execute(table.select().limit(1)).first() is None
        self._key = self._chain_key(new_store=empty)
        self._engine, self._table = engine, table
        return engine, table

    @property
    def shown_url(self) -> str:
        """The URL as messages show it: the password masked (messages reach logs and the UI)."""
        return _masked(self.url)

    def _chain_key(self, new_store: bool) -> bytes:
        """The HMAC key: given, or read from (for a new store: created as) the 0600 file
        beside the sqlite file. A key file missing beside a store with rows is an error,
        never a new key that would make every row look edited."""
        if self.chain_key:
            return bytes.fromhex(self.chain_key)
        if self._sqlite_path is None:
            raise DecisionStoreError(f"decision store {self.shown_url}: no ledger key; set it with "
                                     "UNIFIED_AI_LEDGER_KEY (64 hex characters, a secret)")
        path = Path(f"{self._sqlite_path}.key")
        if not path.exists():
            if not new_store:
                raise DecisionStoreError(f"decision store {self.shown_url}: its ledger key {path} is "
                                         "missing; restore it (rows cannot be verified without it)")
            draft = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
            fd = os.open(draft, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as handle:
                handle.write(secrets.token_hex(32))
            try:
                os.link(draft, path)  # atomic and exclusive: nobody reads a half-written key
            except FileExistsError:
                pass  # another process created it first; read theirs
            finally:
                draft.unlink()
        return bytes.fromhex(path.read_text().strip())

    @contextmanager
    def _guard(self, doing: str) -> Iterator[None]:
        """Database errors name the store: a corrupt file is not a bare traceback."""
        import sqlalchemy as sa

        try:
            yield
        except sa.exc.IntegrityError:
            raise
        except sa.exc.DBAPIError as error:
            raise DecisionStoreError(
                f"decision store {self.shown_url}: cannot {doing}: {error.orig}. "
                + ("If the file is corrupt, restore it from a backup" if self._sqlite_path
                   else "Check that the database server is up and reachable")
                + "; nothing was changed") from None

    # appending and reading -------------------------------------------------------------

    def _append(self, record: str, payload: dict, *, model_name: str | None = None,
                version: str | None = None, change_seq: int | None = None) -> tuple[int, dict]:
        engine, table = self._setup()
        payload = {"record": record, "model_name": model_name, **payload}
        body = _canonical(payload)
        with self._guard(f"append a {record}"), engine.connect() as conn, \
                conn.execution_options(write=True).begin():
            if engine.dialect.name == "postgresql":
                conn.exec_driver_sql("LOCK TABLE decision_log IN SHARE ROW EXCLUSIVE MODE")
            head = conn.execute(table.select().order_by(table.c.id.desc()).limit(1)).mappings().first()
            prev = head["hash"] if head else GENESIS
            row_id = conn.execute(table.insert().values(
                record=record, model_name=model_name, version=version, change_seq=change_seq,
                payload=body, prev_hash=prev, hash=chain_hash(self._key, prev, body),
            )).inserted_primary_key[0]
        return int(row_id), json.loads(body)

    def _read(self, record: str, model_name: str | None = None, after_id: int = 0,
              version: str | None = None) -> list[dict]:
        engine, table = self._setup()
        query = (table.select().where(table.c.record == record, table.c.id > after_id)
                 .order_by(table.c.id))
        if model_name is not None:
            query = query.where(table.c.model_name == model_name)
        if version is not None:
            query = query.where(table.c.version == version)
        with self._guard("read"), engine.connect() as conn:
            rows = conn.execute(query).mappings().all()
        return [self._decode(r) for r in rows]

    @staticmethod
    def _decode(row) -> dict:
        out = json.loads(row["payload"])
        out.pop("record", None)
        out["id"] = row["id"]
        for key in ("created_at", "expires_at"):
            if out.get(key):
                out[key] = datetime.fromisoformat(out[key])
        return out

    def head(self) -> dict | None:
        """The newest row's id and hash: what the registry anchors after a champion change."""
        engine, table = self._setup()
        with self._guard("read"), engine.connect() as conn:
            row = conn.execute(table.select().order_by(table.c.id.desc()).limit(1)).mappings().first()
        return {"id": row["id"], "hash": row["hash"]} if row else None

    def contains(self, row_id: int, row_hash: str) -> bool:
        engine, table = self._setup()
        with self._guard("read"), engine.connect() as conn:
            found = conn.execute(table.select().where(table.c.id == row_id)).mappings().first()
        return found is not None and found["hash"] == row_hash

    # approvals -------------------------------------------------------------------------

    def append_event(self, *, model_name: str, version: str, kind: str, actor: str | None = None,
                     decision: str | None = None, reason: str | None = None,
                     expires_at: datetime | None = None, details: dict | None = None) -> int:
        """kind: request | decision | refusal."""
        row_id, _ = self._append(EVENT, dict(
            version=version, kind=kind, decision=decision, actor=actor, reason=reason,
            created_at=_iso(_now()), expires_at=_iso(expires_at), details=details or {},
        ), model_name=model_name, version=version)
        return row_id

    def events(self, model_name: str | None = None, version: str | None = None,
               after_id: int = 0) -> list[dict]:
        return self._read(EVENT, model_name, after_id, version)

    # champion history ------------------------------------------------------------------

    def changes(self, model_name: str) -> list[dict]:
        """Champion changes, oldest first, each with `status`: done | pending | abandoned."""
        outcomes = {o["seq"]: o for o in self._read(OUTCOME, model_name)}
        changes = self._read(CHANGE, model_name)
        for change in changes:
            outcome = outcomes.get(change["seq"])
            change["status"] = outcome["status"] if outcome else "pending"
            change["outcome"] = outcome
        return changes

    def record_change(self, *, model_name: str, expected_seq: int, action: str,
                      from_version: str | None, to_version: str, actor: str, reason: str,
                      details: dict | None = None) -> dict:
        """Append change number `expected_seq + 1` as pending; ChangeConflict if it exists."""
        import sqlalchemy as sa

        seq = expected_seq + 1
        try:
            row_id, payload = self._append(CHANGE, dict(
                seq=seq, action=action, from_version=from_version, to_version=to_version,
                actor=actor, reason=reason, created_at=_iso(_now()), details=details or {},
            ), model_name=model_name, change_seq=seq)
        except sa.exc.IntegrityError:
            raise ChangeConflict(
                f"champion change #{seq} of {model_name} was already recorded by another "
                "writer; re-run to act on the new state") from None
        return self._decode({"id": row_id, "payload": _canonical(payload)}) | {"status": "pending"}

    def record_outcome(self, *, model_name: str, seq: int, status: str, actor: str,
                       reason: str, details: dict | None = None) -> None:
        """Close a pending change: `done` (the alias was read back) or `abandoned`."""
        self._append(OUTCOME, dict(seq=seq, status=status, actor=actor, reason=reason,
                                   created_at=_iso(_now()), details=details or {}),
                     model_name=model_name)

    @contextmanager
    def champion_lock(self, model_name: str, timeout_s: float = LOCK_TIMEOUT_S) -> Iterator[None]:
        """Held for a whole champion change: read, record, move the alias, read it back."""
        engine, _ = self._setup()
        if engine.dialect.name == "sqlite":
            with _file_lock(Path(f"{self._sqlite_path}.lock"), timeout_s, self.url):
                yield
        elif engine.dialect.name == "postgresql":
            key = zlib.crc32(f"unified-ai:champion:{model_name}".encode())
            with self._guard("lock the champion"), engine.connect() as conn:
                conn.exec_driver_sql(f"SET lock_timeout = '{int(timeout_s * 1000)}ms'")
                conn.exec_driver_sql("SELECT pg_advisory_lock(%s)", (key,))
                conn.commit()
                try:
                    yield
                finally:
                    conn.exec_driver_sql("SELECT pg_advisory_unlock(%s)", (key,))
                    conn.commit()
        else:
            raise DecisionStoreError(f"decision store {self.shown_url}: champion changes need a lock "
                                     f"this database ({engine.dialect.name}) does not offer; "
                                     "use sqlite or PostgreSQL")

    # incidents -------------------------------------------------------------------------

    def record_incident(self, *, kind: str, model_name: str | None, actor: str | None,
                        reason: str | None, details: dict | None = None) -> int:
        if kind not in INCIDENT_KINDS:
            raise ValueError(f"{kind!r} is not an incident kind ({', '.join(INCIDENT_KINDS)})")
        row_id, _ = self._append(INCIDENT, dict(kind=kind, actor=actor, reason=reason,
                                                created_at=_iso(_now()), details=details or {}),
                                 model_name=model_name)
        return row_id

    def incidents(self, kind: str | None = None) -> list[dict]:
        rows = self._read(INCIDENT)
        return [r for r in rows if kind is None or r["kind"] == kind]

    # audit -----------------------------------------------------------------------------

    def verify_chain(self) -> int:
        """Walk the whole log; the number of rows verified, or AuditError at the first bad row."""
        engine, table = self._setup()
        with self._guard("read"), engine.connect() as conn:
            rows = conn.execute(table.select().order_by(table.c.id)).mappings().all()
        prev = GENESIS
        for row in rows:
            where = f"decision store {self.shown_url}: row {row['id']} ({row['record']})"
            if row["prev_hash"] != prev:
                raise AuditError(f"{where} does not follow the row before it: a row was deleted, "
                                 "inserted or reordered there")
            if not hmac.compare_digest(chain_hash(self._key, prev, row["payload"]), row["hash"]):
                raise AuditError(f"{where} was edited: its content no longer matches its hash")
            payload = json.loads(row["payload"])
            indexed = {"record": row["record"], "model_name": row["model_name"]}
            if {k: payload.get(k) for k in indexed} != indexed or (
                row["record"] == CHANGE and payload.get("seq") != row["change_seq"]
            ) or (row["record"] == EVENT and payload.get("version") != row["version"]):
                raise AuditError(f"{where} was edited: its indexed columns disagree with its content")
            prev = row["hash"]
        return len(rows)


@contextmanager
def _file_lock(path: Path, timeout_s: float, url: str) -> Iterator[None]:
    """An exclusive flock; the kernel drops it when the holder's process dies."""
    import fcntl
    import time

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise DecisionStoreError(
                        f"decision store {url}: another champion change has held the lock for "
                        f"over {timeout_s:.0f}s; nothing was changed") from None
                time.sleep(0.01)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


# schema ----------------------------------------------------------------------------------


def _create_engine(url: str) -> Any:
    """The engine every store operation uses; on sqlite a `write=True` transaction begins
    with BEGIN IMMEDIATE (the write lock first), which appends and migrations rely on."""
    import sqlalchemy as sa

    sqlite = url.startswith("sqlite:")
    engine = sa.create_engine(url, **({"connect_args": {"timeout": LOCK_TIMEOUT_S}} if sqlite else {}))
    if sqlite:
        # pysqlite opens transactions lazily, so two appenders could both read the same
        # chain head; BEGIN IMMEDIATE takes the write lock before the read.
        @sa.event.listens_for(engine, "connect")
        def _no_pysqlite_begin(dbapi_connection, _record):
            dbapi_connection.isolation_level = None

        @sa.event.listens_for(engine, "begin")
        def _begin(conn):
            immediate = conn.get_execution_options().get("write", False)
            conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")
    return engine


def _masked(url: str) -> str:
    """The URL for messages: a password never reaches a log."""
    import sqlalchemy as sa

    try:
        return sa.engine.make_url(url).render_as_string(hide_password=True)
    except sa.exc.ArgumentError:
        return "<unparseable URL>"


def _alembic_config(connection: Any = None) -> Any:
    """Alembic configured in code (no alembic.ini): the scripts in the package, and the
    connection env.py runs the migrations on."""
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS).replace("%", "%%"))
    config.attributes["connection"] = connection
    return config


def upgrade_decision_store(url: str, *, engine: Any = None) -> list[str]:
    """Bring the decision store at `url` to the newest schema (Alembic `upgrade head`), so
    a schema change ships as a migration that keeps every row, never as a new table.

    The store's opening calls it; run it yourself to migrate before a deploy. Idempotent: a
    current store is only read. Safe when processes open the store at once: the upgrade runs
    in one transaction holding the write lock (sqlite: BEGIN IMMEDIATE) or an advisory lock
    (PostgreSQL: pg_advisory_xact_lock), and re-reads the version under it. A store made
    before migrations (the table, no alembic_version) is adopted at revision 0001 if its
    columns are 0001's, else refused; a store at a revision this code does not know (made by
    a newer release) is refused, and so is one of the hash-chain-less champion_changes era.
    Refusals write nothing. Returns the revisions applied, oldest first ([] when the store
    was current)."""
    import sqlalchemy as sa
    from alembic import command
    from alembic.script import ScriptDirectory

    own_engine = engine is None
    engine = _create_engine(url) if own_engine else engine
    script = ScriptDirectory.from_config(_alembic_config())
    heads = set(script.get_heads())
    try:
        with engine.connect() as conn:  # read only: the common case writes nothing
            if set(_current_revisions(conn, script, url)) == heads:
                return []
        with engine.connect() as conn, conn.execution_options(write=True).begin():
            if conn.dialect.name == "postgresql":
                conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK})
            before = _current_revisions(conn, script, url)  # again: another process may have won
            if set(before) == heads:
                return []
            if not before and sa.inspect(conn).has_table("champion_changes"):
                raise DecisionStoreError(
                    f"decision store {_masked(url)} was written by an earlier version of "
                    "unified-ai (table champion_changes, no hash chain); keep it as an archive and "
                    "point the project at a new store, or migrate it by hand")
            config = _alembic_config(conn)
            if not before and sa.inspect(conn).has_table(TABLE):
                _require_first_schema(conn, script, url)
                command.stamp(config, FIRST_REVISION)  # adopt it: rows untouched
                before = (FIRST_REVISION,)
            command.upgrade(config, "heads")
        lower = before[0] if before else "base"
        return [s.revision for s in reversed(list(script.iterate_revisions("heads", lower)))]
    finally:
        if own_engine:
            engine.dispose()


def _current_revisions(conn: Any, script: Any, url: str) -> tuple[str, ...]:
    """The store's schema revisions; DecisionStoreError for one these scripts do not have:
    a newer release migrated it, and this code would misread (or damage) its rows."""
    from alembic.migration import MigrationContext

    current = MigrationContext.configure(conn).get_current_heads()
    known = {s.revision for s in script.walk_revisions()}
    unknown = sorted(set(current) - known)
    if unknown:
        raise DecisionStoreError(
            f"decision store {_masked(url)}: its schema is at revision {', '.join(unknown)}, "
            f"which this version of unified-ai does not know (its newest is "
            f"{', '.join(sorted(script.get_heads()))}): a newer release migrated it. Run that "
            "release or a newer one against this store; nothing was written")
    return tuple(current)


def _require_first_schema(conn: Any, script: Any, url: str) -> None:
    """Adopt a pre-migration table only if it is exactly revision 0001's (columns, their types
    and nullability, unique keys): stamping anything else would let later migrations and the
    chain checks run on a schema they were not written for. Fail closed, naming the difference."""
    import sqlalchemy as sa

    expected = script.get_revision(FIRST_REVISION).module.decision_log(sa.MetaData())
    inspector = sa.inspect(conn)
    dialect = conn.dialect

    def shape(type_: Any, nullable: bool) -> str:
        return f"{type_.compile(dialect=dialect)}{'' if nullable else ' NOT NULL'}"

    want = {c.name: shape(c.type, c.nullable) for c in expected.columns}
    have = {c["name"]: shape(c["type"], c["nullable"]) for c in inspector.get_columns(TABLE)}
    differences = [f"missing column {name} ({want[name]})" for name in want if name not in have]
    differences += [f"unexpected column {name} ({have[name]})" for name in have if name not in want]
    differences += [f"column {name} is {have[name]}, expected {want[name]}"
                    for name in want if name in have and have[name] != want[name]]
    unique = {frozenset(u["column_names"]) for u in inspector.get_unique_constraints(TABLE)}
    unique |= {frozenset(i["column_names"]) for i in inspector.get_indexes(TABLE) if i["unique"]}
    expected_unique = [c for c in expected.constraints if isinstance(c, sa.UniqueConstraint)]
    differences += [f"no unique key on ({', '.join(c.name for c in u.columns)})"
                    for u in expected_unique if frozenset(c.name for c in u.columns) not in unique]
    if differences:
        raise DecisionStoreError(
            f"decision store {_masked(url)}: table {TABLE} has no schema version and differs "
            f"from the schema unified-ai created (revision {FIRST_REVISION}): "
            f"{'; '.join(differences)}. It was not adopted and nothing was written; fix the "
            "table by hand to match, or point the project at a new store")
