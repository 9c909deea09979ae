"""The local instance's event log (unified_assets/instance_event_log.py) on real Dagster
instances: it keeps one index connection instead of a new engine per read and write, writes
what Dagster's own storage writes, follows a live run for the UI, and loses nothing when its
files are replaced, when threads share it or when the process forks."""

import contextlib
import multiprocessing
import os
import shutil
import sqlite3
import threading
import time
from pathlib import Path

import dagster as dg
import pytest
from sqlalchemy import event
from sqlalchemy.engine import Engine

from tests.instances import LOCAL_EVENT_LOG, LOCAL_INSTANCE
from unified_assets import instance_event_log
from unified_assets.instance_event_log import ReusingSqliteEventLogStorage

PARTS = dg.StaticPartitionsDefinition([f"p{i}" for i in range(6)])


@dg.asset(partitions_def=PARTS, check_specs=[
    dg.AssetCheckSpec(name, asset="checked", partitions_def=PARTS) for name in ("a", "b")])
def checked(context: dg.AssetExecutionContext):
    for key in context.partition_keys:
        context.add_asset_metadata({"key": key}, partition_key=key)
    yield dg.Output(None)
    for key in context.partition_keys:
        for name in ("a", "b"):
            yield dg.AssetCheckEvaluation(asset_key=context.asset_key, check_name=name,
                                          passed=name == "a", partition=key)
    for output_name in context.assets_def.check_specs_by_output_name:
        yield dg.Output(None, output_name=output_name)


class NoValues(dg.IOManager):
    """Stores nothing: the tests are about the events a run writes."""

    def handle_output(self, context, obj) -> None:
        return None

    def load_input(self, context) -> None:
        return None


def materialize(instance: dg.DagsterInstance, **kwargs) -> dg.ExecuteInProcessResult:
    return dg.materialize([checked], instance=instance, resources={"io_manager": NoValues()},
                          **kwargs)


@pytest.fixture
def index_connects():
    """New DBAPI connections to any index.db in this process, counted."""
    counted: list[int] = [0]

    def on_connect(dbapi_connection, _record):
        path = dbapi_connection.execute("PRAGMA database_list").fetchone()[2]
        if path.endswith("index.db"):
            counted[0] += 1

    event.listen(Engine, "connect", on_connect)
    yield counted
    event.remove(Engine, "connect", on_connect)


def _made(folder: Path) -> Path:
    folder.mkdir(parents=True)
    return folder


def _range_run(instance: dg.DagsterInstance) -> dg.ExecuteInProcessResult:
    return materialize(instance, tags={
        "dagster/asset_partition_range_start": "p0", "dagster/asset_partition_range_end": "p5"})


def _written(instance: dg.DagsterInstance, run_id: str) -> list[tuple]:
    """What a run recorded, without ids and times."""
    return [(r.event_log_entry.dagster_event_type, r.event_log_entry.step_key)
            for r in instance.get_records_for_run(run_id, limit=10_000).records]


def test_the_local_instance_uses_it(tmp_path: Path):
    with dg.instance_for_test(overrides=LOCAL_EVENT_LOG, temp_dir=str(tmp_path)) as instance:
        assert isinstance(instance.event_log_storage, ReusingSqliteEventLogStorage)
        run_id = materialize(instance, partition_key="p1").run_id
        # Where Dagster's default storage keeps it: switching keeps every run's history.
        assert (tmp_path / "history" / "runs" / "index.db").is_file()
        assert (tmp_path / "history" / "runs" / f"{run_id}.db").is_file()


def test_a_range_run_keeps_one_index_connection_and_writes_what_dagster_writes(
        tmp_path: Path, index_connects):
    with dg.instance_for_test(temp_dir=str(_made(tmp_path / "default"))) as instance:
        index_connects[0] = 0
        default_run = _range_run(instance)
        default_connects = index_connects[0]
        default_written = _written(instance, default_run.run_id)
    with dg.instance_for_test(overrides=LOCAL_EVENT_LOG, temp_dir=str(_made(tmp_path / "reusing"))) \
            as instance:
        index_connects[0] = 0
        run = _range_run(instance)
        assert run.success
        assert index_connects[0] <= 1, index_connects[0]
        assert default_connects > 50  # Dagster's own storage: a new connection each time
        assert _written(instance, run.run_id) == default_written
        records = instance.fetch_materializations(checked.key, limit=100).records
        assert sorted(r.partition_key for r in records) == [f"p{i}" for i in range(6)]
        assert records[0].asset_materialization.metadata["key"].value == records[0].partition_key
        check = instance.event_log_storage.get_latest_asset_check_execution_by_key(
            [dg.AssetCheckKey(checked.key, "b")])
        assert check[dg.AssetCheckKey(checked.key, "b")].status.value == "FAILED"


def test_a_live_run_is_followed_by_another_process_watching_it(tmp_path: Path):
    """The Dagster UI follows a live run by watching its log file change (watchdog): the
    write stays in the log's -wal (its connection is kept), which the watch follows too, so a
    watcher sees each event as it lands."""
    with dg.instance_for_test(overrides=LOCAL_EVENT_LOG, temp_dir=str(tmp_path)) as instance:
        run_id = materialize(instance, partition_key="p0").run_id
        before = len(instance.get_records_for_run(run_id, limit=10_000).records)
        watcher = ReusingSqliteEventLogStorage(str(tmp_path / "history" / "runs"))
        seen: list = []
        watcher.watch(run_id, None, lambda entry, cursor: seen.append(entry))
        try:
            instance.report_engine_event("still going", instance.get_run_by_id(run_id))
            deadline = time.monotonic() + 30
            while len(seen) < before + 1 and time.monotonic() < deadline:
                time.sleep(0.1)
            assert any(getattr(e, "message", "") == "still going" for e in seen), len(seen)
        finally:
            watcher.end_watch(run_id, seen.append)
            watcher.dispose()


def test_an_index_file_replaced_under_its_name_is_used_not_the_old_one(tmp_path: Path):
    """The suite's saved states and a reset home: the folder is deleted and another put back
    at the same path while the process keeps its storage."""
    with dg.instance_for_test(overrides=LOCAL_EVENT_LOG, temp_dir=str(_made(tmp_path / "work"))) \
            as instance:
        assert materialize(instance, partition_key="p0").success
        saved = tmp_path / "saved"
        shutil.copytree(tmp_path / "work", saved)
        assert materialize(instance, partition_key="p1").success
        shutil.rmtree(tmp_path / "work" / "history")
        shutil.copytree(saved / "history", tmp_path / "work" / "history")
        assert materialize(instance, partition_key="p2").success
        partitions = {r.partition_key for r in
                      instance.fetch_materializations(checked.key, limit=100).records}
        assert partitions == {"p0", "p2"}  # the restored file, and the write after it
    fresh = ReusingSqliteEventLogStorage(str(tmp_path / "work" / "history" / "runs"))
    try:
        assert {r.partition_key for r in fresh.fetch_materializations(
            checked.key, limit=100).records} == {"p0", "p2"}
    finally:
        fresh.dispose()


def test_threads_sharing_it_lose_no_write(tmp_path: Path):
    """The daemon and the webserver read and write from several threads through one
    storage: the kept connection is taken by one at a time, and every write lands."""
    with dg.instance_for_test(overrides=LOCAL_EVENT_LOG, temp_dir=str(tmp_path)) as instance:
        errors: list[BaseException] = []

        def report(thread: int) -> None:
            try:
                for index in range(25):
                    instance.report_runless_asset_event(dg.AssetMaterialization(
                        "reported", partition=f"{thread}-{index}"))
                    instance.fetch_materializations(dg.AssetKey("reported"), limit=1)
            except BaseException as error:  # noqa: BLE001 - reported by the test below
                errors.append(error)

        threads = [threading.Thread(target=report, args=(i,)) for i in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=300)
        assert not errors, errors
        records = instance.fetch_materializations(dg.AssetKey("reported"), limit=1000).records
        assert len({r.partition_key for r in records}) == 100


def _child(temp_dir: str, queue) -> None:
    instance = dg.DagsterInstance.get()  # DAGSTER_HOME is the parent's test instance
    run_id = materialize(instance, partition_key="p4").run_id
    queue.put(run_id)


def test_a_forked_child_writes_through_its_own_connections(tmp_path: Path):
    with dg.instance_for_test(overrides=LOCAL_EVENT_LOG, temp_dir=str(tmp_path)) as instance:
        assert os.environ["DAGSTER_HOME"] == str(tmp_path)
        assert materialize(instance, partition_key="p3").success
        context = multiprocessing.get_context("fork")
        queue = context.Queue()
        child = context.Process(target=_child, args=(str(tmp_path), queue))
        child.start()
        child_run = queue.get(timeout=120)
        child.join(timeout=60)
        assert child.exitcode == 0
        assert instance.get_run_by_id(child_run).status == dg.DagsterRunStatus.SUCCESS
        assert materialize(instance, partition_key="p5").success
        assert {r.partition_key for r in instance.fetch_materializations(
            checked.key, limit=100).records} == {"p3", "p4", "p5"}


def test_any_way_of_opening_the_instance_finds_its_own_event_log(tmp_path: Path, monkeypatch):
    """Found by the landing benchmark: `DagsterInstance.from_config(folder)` with DAGSTER_HOME
    unset (or naming another instance) must read the folder's own event log."""
    for name in ("one", "other"):
        (tmp_path / name).mkdir()
        shutil.copy(LOCAL_INSTANCE, tmp_path / name / "dagster.yaml")
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "other"))
    with dg.DagsterInstance.from_config(str(tmp_path / "one")) as instance:
        run_id = materialize(instance, partition_key="p0").run_id
    assert (tmp_path / "one" / "history" / "runs" / f"{run_id}.db").is_file()
    assert not (tmp_path / "other" / "history").exists()
    monkeypatch.delenv("DAGSTER_HOME")
    with dg.DagsterInstance.from_config(str(tmp_path / "one")) as instance:
        assert isinstance(instance.event_log_storage, ReusingSqliteEventLogStorage)
        assert instance.get_records_for_run(run_id, limit=5).records


def _child_on(instance: dg.DagsterInstance, queue) -> None:
    """In a forked child: a run through the parent's own instance object and its storage."""
    queue.put(materialize(instance, partition_key="p1").run_id)


def test_a_forked_child_does_not_inherit_a_lock_held_at_the_fork(tmp_path: Path):
    """Found in review: a thread inside a read or write when another thread forks left the
    child's copy of Dagster's storage lock taken forever; the child's first event hung."""
    with dg.instance_for_test(overrides=LOCAL_EVENT_LOG, temp_dir=str(tmp_path)) as instance:
        storage = instance.event_log_storage
        assert materialize(instance, partition_key="p0").success
        context = multiprocessing.get_context("fork")
        queue = context.Queue()
        # As a thread inside `_connect`, or making the empty run log, at the moment of the fork.
        with storage._db_lock, instance_event_log._template_lock:
            child = context.Process(target=_child_on, args=(instance, queue))
            child.start()
        child_run = queue.get(timeout=120)
        child.join(timeout=60)
        assert child.exitcode == 0
        assert instance.get_run_by_id(child_run).status == dg.DagsterRunStatus.SUCCESS


@pytest.fixture
def index_commits():
    """Commits to any index.db in this process, counted."""
    counted: list[int] = [0]

    def on_commit(conn):
        if str(conn.engine.url).endswith("index.db"):
            counted[0] += 1

    event.listen(Engine, "commit", on_commit)
    yield counted
    event.remove(Engine, "commit", on_commit)


def _index_records(instance: dg.DagsterInstance) -> list[tuple]:
    records = instance.fetch_materializations(checked.key, limit=100).records
    return sorted((r.partition_key, r.asset_materialization.metadata["key"].value) for r in records)


def test_a_range_runs_materializations_share_one_index_transaction(
        tmp_path: Path, index_commits, monkeypatch):
    """Found by profiling an ingestion run of 100 batches: each partition's materialization was
    its own transaction on the run's log and on index.db. Dagster hands the materializations
    of one partitioned output (and a run's planned events) to `store_event_batch` when
    DAGSTER_EVENT_BATCH_SIZE is set, which this storage sets; they are now written together,
    and what is written is the same."""
    written, commits = {}, {}
    for mode in ("0", None):  # batching off (as set by hand), then this storage's default
        if mode is None:
            monkeypatch.delenv("DAGSTER_EVENT_BATCH_SIZE", raising=False)
        else:
            monkeypatch.setenv("DAGSTER_EVENT_BATCH_SIZE", mode)
        with dg.instance_for_test(overrides=LOCAL_EVENT_LOG,
                                  temp_dir=str(_made(tmp_path / str(mode)))) as instance:
            assert (os.environ["DAGSTER_EVENT_BATCH_SIZE"] != "0") == (mode is None)
            index_commits[0] = 0
            run = _range_run(instance)
            assert run.success
            commits[mode] = index_commits[0]
            written[mode] = (_written(instance, run.run_id), _index_records(instance))
    assert written[None] == written["0"]
    assert written[None][1] == [(f"p{i}", f"p{i}") for i in range(6)]
    # Six materializations and twelve planned events: one transaction each without batches.
    assert commits[None] <= commits["0"] - 10, commits


def test_a_batch_whose_index_write_fails_is_written_once_event_by_event(tmp_path: Path,
                                                                          monkeypatch):
    """If the batch's index transaction fails, its events are mirrored one by one (as
    Dagster's storage does): each is in the run's log and the index exactly once, never
    written again by Dagster's own fallback."""
    monkeypatch.delenv("DAGSTER_EVENT_BATCH_SIZE", raising=False)
    failures = []
    original = ReusingSqliteEventLogStorage._store_asset_event

    def fail_in_a_batch(self, conn, event, event_id):  # the first: the run's planned events
        if not failures:
            failures.append(event_id)
            raise RuntimeError("index write failed")
        return original(self, conn, event, event_id)

    monkeypatch.setattr(ReusingSqliteEventLogStorage, "_store_asset_event", fail_in_a_batch)
    with dg.instance_for_test(overrides=LOCAL_EVENT_LOG, temp_dir=str(tmp_path)) as instance:
        run = _range_run(instance)
        assert run.success and failures
        kinds = [kind for kind, _ in _written(instance, run.run_id)]
        assert kinds.count(dg.DagsterEventType.ASSET_MATERIALIZATION) == 6
        assert kinds.count(dg.DagsterEventType.ASSET_MATERIALIZATION_PLANNED) == 6
        assert _index_records(instance) == [(f"p{i}", f"p{i}") for i in range(6)]
        # The planned checks were in the failed batch too: each partition's check once.
        assert [(name, partition) for name, partition, *_ in _check_executions(instance)] == \
            [(name, f"p{i}") for name in ("a", "b") for i in range(6)]


def _check_executions(instance: dg.DagsterInstance) -> list[tuple]:
    """Every check execution recorded (per check and partition), without ids and times."""
    storage = instance.event_log_storage
    return sorted((r.key.name, r.partition, r.status.value,
                   r.event.dagster_event_type if r.event else None)
                  for name in ("a", "b") for r in storage.get_asset_check_execution_history(
                      dg.AssetCheckKey(checked.key, name), limit=100))


def test_a_check_events_index_writes_are_one_transaction(tmp_path: Path, index_commits,
                                                         monkeypatch):
    """Found profiling the lifecycle: Dagster writes each asset check event to index.db in two
    transactions (its mirror, then its execution record), and an ingestion of 8 batches has 40
    check results and their planned events. Here both are one transaction, and the executions
    recorded are those Dagster's own storage records."""
    recorded = {}
    with dg.instance_for_test(temp_dir=str(_made(tmp_path / "default"))) as instance:
        _range_run(instance)
        recorded["default"] = _check_executions(instance)
    per_result: list[int] = []
    store = ReusingSqliteEventLogStorage.store_event

    def counted(self, event):
        before = index_commits[0]
        store(self, event)
        if event.dagster_event_type == dg.DagsterEventType.ASSET_CHECK_EVALUATION:
            per_result.append(index_commits[0] - before)

    monkeypatch.setattr(ReusingSqliteEventLogStorage, "store_event", counted)
    with dg.instance_for_test(overrides=LOCAL_EVENT_LOG,
                              temp_dir=str(_made(tmp_path / "reusing"))) as instance:
        assert _range_run(instance).success
        recorded["reusing"] = _check_executions(instance)
    assert per_result == [1] * 12  # six partitions, two checks
    assert recorded["reusing"] == recorded["default"]
    assert {status for _, _, status, _ in recorded["reusing"]} == {"SUCCEEDED", "FAILED"}


def _schema(db: Path) -> list[tuple]:
    with contextlib.closing(sqlite3.connect(db)) as conn:
        tables = conn.execute("SELECT type, name, sql FROM sqlite_master ORDER BY name").fetchall()
        stamp = conn.execute("SELECT version_num FROM alembic_version").fetchall()
        mode = conn.execute("PRAGMA journal_mode").fetchall()
    return [*tables, *stamp, *mode]


def test_a_new_runs_log_is_dagsters_empty_log_copied_not_created_again(tmp_path: Path):
    created: list[str] = []

    def on_execute(_conn, _cursor, statement, *_args) -> None:
        if statement.lstrip().upper().startswith("CREATE TABLE"):
            created.append(statement)

    with dg.instance_for_test(temp_dir=str(_made(tmp_path / "default"))) as instance:
        dagster_made = _schema(tmp_path / "default" / "history" / "runs" /
                               f"{materialize(instance, partition_key='p1').run_id}.db")
    event.listen(Engine, "before_cursor_execute", on_execute)
    try:
        with dg.instance_for_test(overrides=LOCAL_EVENT_LOG,
                                  temp_dir=str(_made(tmp_path / "reusing"))) as instance:
            materialize(instance, partition_key="p1")  # the index and the process's template
            created.clear()
            runs = [materialize(instance, partition_key=f"p{i}") for i in (2, 3)]
            assert created == []
            assert all(r.success for r in runs)
            folder = tmp_path / "reusing" / "history" / "runs"
            for run in runs:
                assert _schema(folder / f"{run.run_id}.db") == dagster_made
                assert _written(instance, run.run_id)[-1][0] == dg.DagsterEventType.RUN_SUCCESS
            # A log another process created meanwhile is kept as it is.
            storage = instance.event_log_storage
            before = (folder / f"{runs[0].run_id}.db").read_bytes()
            assert storage._from_template(str(folder / f"{runs[0].run_id}.db")) is False
            assert (folder / f"{runs[0].run_id}.db").read_bytes() == before
            assert sorted(p.name for p in folder.iterdir() if p.suffix not in (".db", ".db-wal",
                                                                               ".db-shm")) == []
    finally:
        event.remove(Engine, "before_cursor_execute", on_execute)


def test_a_process_opening_logs_that_exist_does_not_read_alembics_scripts(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Dagster's `_initdb` leaves a log that carries a migration stamp as it is, after reading
    alembic's migration scripts for their head revision: 0.03-0.05 s for index.db and again
    for a run's log, in every run and step process that writes an event. A stamped log is
    taken as initialised here, as `_initdb` takes it; a log without a stamp still gets it."""
    def initdb_counted(self, engine, **kwargs):
        made.append(Path(engine.url.database).name)
        return initdb(self, engine, **kwargs)

    initdb, made = ReusingSqliteEventLogStorage._initdb, []
    folder = tmp_path / "history" / "runs"
    with dg.instance_for_test(overrides=LOCAL_EVENT_LOG, temp_dir=str(tmp_path)) as instance:
        run_id = materialize(instance, partition_key="p1").run_id
    monkeypatch.setattr(ReusingSqliteEventLogStorage, "_initdb", initdb_counted)
    other = ReusingSqliteEventLogStorage(str(folder))  # as another process opening them
    try:
        assert other.get_records_for_run(run_id, limit=100).records
        assert other.has_asset_key(dg.AssetKey("checked"))
        assert made == []
        sqlite3.connect(folder / "unstamped.db").close()  # an empty file where a log would be
        assert other.get_records_for_run("unstamped", limit=1).records == []
        assert made == ["unstamped.db"]
        assert _schema(folder / "unstamped.db")[-2:] == _schema(folder / f"{run_id}.db")[-2:]
    finally:
        other.dispose()
