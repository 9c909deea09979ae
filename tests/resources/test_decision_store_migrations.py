"""The decision store's schema migrations (Alembic) on real databases: a sqlite file and a
throwaway PostgreSQL 15 cluster (tests/pg.py), each test on both.

A store made before migrations (the table, no alembic_version) is built here with the table
definition that code used, copied below, and rows with a valid hash chain."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa

from resources.decision_store import (
    GENESIS,
    DecisionStore,
    DecisionStoreError,
    _alembic_config,
    _canonical,
    _create_engine,
    chain_hash,
    upgrade_decision_store,
)
from tests.pg import create_database, postgres_fixture

KEY = "ab" * 32
HEAD = "0002"
postgres = pytest.fixture(scope="module")(postgres_fixture)


def previous_schema(metadata: sa.MetaData) -> sa.Table:
    """`DecisionStore._setup`'s table before migrations (commit aa6aa52), verbatim; that code
    made it with `metadata.create_all(engine)`."""
    return sa.Table(
        "decision_log", metadata,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("record", sa.String(20), nullable=False),  # event/change/outcome/incident
        sa.Column("model_name", sa.String(200)),
        sa.Column("version", sa.String(50)),  # event: the version decided on
        sa.Column("change_seq", sa.Integer),  # change: its number per model
        sa.Column("payload", sa.Text, nullable=False),  # canonical JSON, what is hashed
        sa.Column("prev_hash", sa.String(64), nullable=False, unique=True),
        sa.Column("hash", sa.String(64), nullable=False),
        sa.UniqueConstraint("model_name", "change_seq", name="one_change_per_seq"),
        sa.Index("by_record_model", "record", "model_name"),
    )


# rows as the previous code appended them: (record, model_name, version, change_seq, payload)
OLD_ROWS = [
    ("event", "fraud", "1", None, dict(version="1", kind="request", decision=None, actor="ci",
                                       reason=None, created_at="2025-01-01T00:00:00+00:00",
                                       expires_at=None, details={})),
    ("event", "fraud", "1", None, dict(version="1", kind="decision", decision="approve",
                                       actor="alice", reason="holdout ok",
                                       created_at="2025-01-01T01:00:00+00:00",
                                       expires_at="2025-01-08T01:00:00+00:00", details={})),
    ("change", "fraud", None, 1, dict(seq=1, action="promote", from_version=None, to_version="1",
                                      actor="alice", reason="approved",
                                      created_at="2025-01-01T02:00:00+00:00", details={})),
    ("outcome", "fraud", None, None, dict(seq=1, status="done", actor="alice", reason="read back",
                                          created_at="2025-01-01T02:00:01+00:00", details={})),
    ("incident", None, None, None, dict(kind="champion_missing", actor=None, reason="alias gone",
                                        created_at="2025-01-02T00:00:00+00:00", details={})),
]


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request: pytest.FixtureRequest, tmp_path) -> str:
    """A URL of an empty store: a new sqlite file, or a new database on the module's cluster."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'decisions.db'}"
    return create_database(request.getfixturevalue("postgres"), f"t_{uuid.uuid4().hex[:12]}")


@pytest.fixture
def db(url: str) -> Iterator[sa.Engine]:
    """A plain engine on the store, to look at it from outside."""
    engine = sa.create_engine(url)
    yield engine
    engine.dispose()


def make_old_store(db: sa.Engine, table_factory=previous_schema) -> None:
    """The store as the previous code left it: its table and chained rows, no alembic_version."""
    table = table_factory(sa.MetaData())
    table.metadata.create_all(db)
    prev = GENESIS
    with db.begin() as conn:
        for record, model_name, version, change_seq, payload in OLD_ROWS:
            body = _canonical({"record": record, "model_name": model_name, **payload})
            row_hash = chain_hash(bytes.fromhex(KEY), prev, body)
            conn.execute(table.insert().values(record=record, model_name=model_name, version=version,
                                               change_seq=change_seq, payload=body, prev_hash=prev,
                                               hash=row_hash))
            prev = row_hash


def rows(db: sa.Engine) -> list[tuple]:
    with db.connect() as conn:
        return [tuple(r) for r in conn.exec_driver_sql("SELECT * FROM decision_log ORDER BY id")]


def revision(db: sa.Engine) -> str | None:
    with db.connect() as conn:
        if not sa.inspect(conn).has_table("alembic_version"):
            return None
        return conn.exec_driver_sql("SELECT version_num FROM alembic_version").scalar_one()


def indexes(db: sa.Engine) -> set[str]:
    """The lookup indexes (PostgreSQL also lists the unique constraints' own)."""
    with db.connect() as conn:
        return {i["name"] for i in sa.inspect(conn).get_indexes("decision_log") if not i["unique"]}


def open_store(url: str) -> DecisionStore:
    store = DecisionStore(url=url, chain_key=KEY)
    store.head()  # opening the store runs the migrations
    return store


def test_fresh_store_upgrades_to_head(url: str, db: sa.Engine) -> None:
    assert upgrade_decision_store(url) == ["0001", HEAD]
    assert revision(db) == HEAD
    assert indexes(db) == {"by_record_model_version"}
    store = open_store(url)
    store.append_event(model_name="fraud", version="1", kind="request")
    assert store.verify_chain() == 1


def test_old_store_is_adopted_with_every_row_and_the_chain(url: str, db: sa.Engine) -> None:
    make_old_store(db)
    before = rows(db)
    assert revision(db) is None and indexes(db) == {"by_record_model"}

    store = open_store(url)

    assert revision(db) == HEAD
    assert rows(db) == before
    assert indexes(db) == {"by_record_model_version"}
    assert store.verify_chain() == len(OLD_ROWS)
    assert [e["kind"] for e in store.events("fraud", "1")] == ["request", "decision"]
    assert [(c["seq"], c["status"]) for c in store.changes("fraud")] == [(1, "done")]
    assert [i["kind"] for i in store.incidents()] == ["champion_missing"]
    store.append_event(model_name="fraud", version="2", kind="request")  # the chain goes on
    assert store.verify_chain() == len(OLD_ROWS) + 1


def test_a_second_open_writes_nothing(url: str, db: sa.Engine) -> None:
    make_old_store(db)
    open_store(url)
    engine = _create_engine(url)
    statements: list[str] = []
    sa.event.listen(engine, "before_cursor_execute",
                    lambda _c, _cur, statement, *_a: statements.append(statement))
    try:
        assert upgrade_decision_store(url, engine=engine) == []
    finally:
        engine.dispose()
    writes = [s for s in statements
              if s.split()[0].upper() in {"INSERT", "UPDATE", "DELETE", "CREATE", "DROP", "ALTER"}]
    assert statements and not writes
    before = rows(db)
    assert open_store(url).verify_chain() == len(OLD_ROWS)
    assert rows(db) == before and revision(db) == HEAD


def test_stores_opened_at_once_migrate_once(url: str, db: sa.Engine) -> None:
    """Processes starting together (Dagster's webserver, daemon and runs): one migrates, the
    others wait for it and find the store current. Each thread has its own engine and
    connections, so the database sees separate sessions racing."""
    start = threading.Barrier(4)
    results: list[Any] = []

    def opener() -> None:
        start.wait()
        try:
            results.append(upgrade_decision_store(url))
        except Exception as error:  # reported below, with the others' results
            results.append(error)

    threads = [threading.Thread(target=opener) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not [r for r in results if isinstance(r, Exception)], results
    assert sorted(results, key=len) == [[], [], [], ["0001", HEAD]], results
    assert revision(db) == HEAD
    assert open_store(url).verify_chain() == 0


def test_a_store_from_a_newer_release_is_refused(url: str, db: sa.Engine) -> None:
    make_old_store(db)
    open_store(url)
    with db.begin() as conn:
        conn.exec_driver_sql("UPDATE alembic_version SET version_num = '0099_future'")
    before = rows(db)

    with pytest.raises(DecisionStoreError, match="revision 0099_future") as refused:
        open_store(url)
    assert "newer release" in str(refused.value) and "nothing was written" in str(refused.value)
    with pytest.raises(DecisionStoreError, match="0099_future"):
        upgrade_decision_store(url)
    assert rows(db) == before and revision(db) == "0099_future"
    assert indexes(db) == {"by_record_model_version"}


def differing_schema(metadata: sa.MetaData) -> sa.Table:
    """The previous table, changed by hand: no `version`, payload shorter, an extra column."""
    return sa.Table(
        "decision_log", metadata,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("record", sa.String(20), nullable=False),
        sa.Column("model_name", sa.String(200)),
        sa.Column("change_seq", sa.Integer),
        sa.Column("payload", sa.String(4000), nullable=False),
        sa.Column("prev_hash", sa.String(64), nullable=False, unique=True),
        sa.Column("hash", sa.String(64), nullable=False),
        sa.Column("note", sa.Text),
        sa.UniqueConstraint("model_name", "change_seq", name="one_change_per_seq"),
    )


def test_an_old_table_that_differs_is_refused(url: str, db: sa.Engine) -> None:
    table = differing_schema(sa.MetaData())
    table.metadata.create_all(db)
    with db.begin() as conn:
        conn.execute(table.insert().values(record="event", payload="{}", prev_hash=GENESIS, hash="x"))
    if db.dialect.name == "postgresql":  # trust auth ignores it; the message must not show it
        url = sa.engine.make_url(url).set(password="s3cret").render_as_string(hide_password=False)

    with pytest.raises(DecisionStoreError) as refused:
        open_store(url)
    message = str(refused.value)
    assert "table decision_log" in message
    assert "missing column version (VARCHAR(50))" in message
    assert "column payload is VARCHAR(4000) NOT NULL, expected TEXT NOT NULL" in message
    assert "unexpected column note (TEXT)" in message
    assert sa.engine.make_url(url).render_as_string(hide_password=True) in message
    assert "s3cret" not in message
    assert revision(db) is None and len(rows(db)) == 1  # not stamped, not touched


def test_a_store_from_before_the_hash_chain_is_refused(url: str, db: sa.Engine) -> None:
    with db.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE champion_changes (id INTEGER PRIMARY KEY, model_name TEXT)")
    with pytest.raises(DecisionStoreError, match="table champion_changes, no hash chain"):
        open_store(url)
    with db.connect() as conn:
        assert set(sa.inspect(conn).get_table_names()) == {"champion_changes"}


def test_migration_0002_goes_down_and_up_keeping_rows(url: str, db: sa.Engine) -> None:
    from alembic import command

    make_old_store(db)
    open_store(url)
    before = rows(db)
    with _create_engine(url).begin() as conn:
        command.downgrade(_alembic_config(conn), "0001")
    assert revision(db) == "0001" and indexes(db) == {"by_record_model"} and rows(db) == before
    assert upgrade_decision_store(url) == [HEAD]
    assert open_store(url).verify_chain() == len(OLD_ROWS) and rows(db) == before


def test_approval_reads_use_the_new_index(url: str, db: sa.Engine) -> None:
    """events(model_name, version), read on every approval and promotion check, on a log of
    a model with many versions (rows for the planner only, outside the chain)."""
    make_old_store(db)
    open_store(url)
    with db.begin() as conn:
        conn.execute(sa.text("INSERT INTO decision_log (record, model_name, version, payload, "
                             "prev_hash, hash) VALUES ('event', 'fraud', :v, '{}', :p, 'x')"),
                     [{"v": str(v), "p": f"filler-{v}-{k}"} for v in range(2, 500) for k in range(4)])
        conn.exec_driver_sql("ANALYZE")
    db.dispose()  # a fresh connection: sqlite's EXPLAIN does not reload a changed schema
    query = ("SELECT * FROM decision_log WHERE record = 'event' AND model_name = 'fraud' "
             "AND version = '1' AND id > 0 ORDER BY id")
    explain = "EXPLAIN" if db.dialect.name == "postgresql" else "EXPLAIN QUERY PLAN"
    with db.connect() as conn:
        plan = " ".join(str(row[-1]) for row in conn.exec_driver_sql(f"{explain} {query}"))
    assert "by_record_model_version" in plan, plan


@pytest.mark.parametrize("dialect", ["sqlite", "postgresql"])
def test_first_revision_is_the_previous_schema(dialect: str) -> None:
    """0001 emits exactly the DDL the previous code's create_all did: adopted stores and new
    ones at 0001 are the same schema."""
    from alembic.script import ScriptDirectory
    from sqlalchemy.dialects import postgresql, sqlite
    from sqlalchemy.schema import CreateIndex, CreateTable

    first = ScriptDirectory.from_config(_alembic_config()).get_revision("0001").module
    target = {"sqlite": sqlite.dialect(), "postgresql": postgresql.dialect()}[dialect]

    def ddl(table: sa.Table) -> list[str]:
        return [str(CreateTable(table).compile(dialect=target))] + sorted(
            str(CreateIndex(index).compile(dialect=target)) for index in table.indexes)

    assert ddl(first.decision_log(sa.MetaData())) == ddl(previous_schema(sa.MetaData()))


def test_a_store_that_cannot_be_reached_names_it_without_its_password() -> None:
    """Store errors reach logs and the Dagster UI: the URL is shown, the password never."""
    from tests.ray.conftest import free_port

    store = DecisionStore(url=f"postgresql+psycopg2://ops:s3cret@127.0.0.1:{free_port()}/d",
                          chain_key="00" * 32)
    with pytest.raises(DecisionStoreError) as error:
        store.events()
    message = str(error.value)
    assert "s3cret" not in message and "postgresql+psycopg2://ops:***@127.0.0.1" in message
    assert "database server is up and reachable" in message and "nothing was changed" in message
