"""The local instance's SQLite tuning (unified_assets/instance_sqlite.py) on real Dagster
instances: which files it tunes, that a close no longer checkpoints, that other SQLite files
(MLflow's, the decision store's) are left alone, and that nothing committed is lost when a
process is SIGKILLed or forks."""

from __future__ import annotations

import multiprocessing
import os
import shutil
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import dagster as dg
import pytest
from sqlalchemy import create_engine, text

from unified_assets import instance_sqlite

SYNCHRONOUS = {0: "OFF", 1: "NORMAL", 2: "FULL", 3: "EXTRA"}


@dg.asset
def tiny() -> int:
    return 1


@pytest.fixture(autouse=True)
def installed() -> None:
    instance_sqlite.install()  # as importing the code location does


def _synchronous(path: Path) -> str:
    """The setting a new SQLAlchemy connection to the file gets in this process."""
    engine = create_engine(f"sqlite:///{path}")
    with engine.connect() as connection:
        value = connection.execute(text("PRAGMA synchronous")).scalar()
    engine.dispose()
    return SYNCHRONOUS[value]


def _wal_mode(path: Path) -> None:
    with sqlite3.connect(path) as connection:
        connection.execute("PRAGMA journal_mode=WAL")
        connection.execute("CREATE TABLE IF NOT EXISTS t (x TEXT)")


def test_a_runs_files_are_tuned_and_only_its_own_log_checkpoints_on_close(tmp_path: Path):
    with dg.instance_for_test(temp_dir=str(tmp_path)) as instance:
        result = dg.materialize([tiny], instance=instance)
        assert result.success
        shared = {"runs": tmp_path / "history" / "runs.db",
                  "index": tmp_path / "history" / "runs" / "index.db"}
        shard = tmp_path / "history" / "runs" / f"{result.run_id}.db"
        kept = instance_sqlite.kept_files()
        for name, path in shared.items():
            assert str(path) in kept, (name, kept)
            assert _synchronous(path) == "NORMAL", name
            # Dagster closed its connections; this process's idle one kept the log: no
            # checkpoint (and fsync) on every close.
            assert Path(f"{path}-wal").exists(), name
        # The run's own log is written through on each close: the UI follows a live run by
        # watching that file (found: with a connection held, a live run page stayed still).
        assert str(shard) not in kept
        assert _synchronous(shard) == "NORMAL"
        before = shard.stat().st_mtime_ns
        instance.report_engine_event("one more event", instance.get_run_by_id(result.run_id))
        assert shard.stat().st_mtime_ns > before
        assert not Path(f"{shard}-wal").exists()
        events = instance.get_records_for_run(result.run_id).records
        assert any(e.event_log_entry.dagster_event_type == dg.DagsterEventType.RUN_SUCCESS
                   for e in events)


def test_other_sqlite_files_are_left_as_they_are(tmp_path: Path):
    # MLflow's store and the decision store are SQLite files too: never tuned, never held.
    for name in ("mlflow.db", "decisions.db", "history/other.db", "runs/index.db"):
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        _wal_mode(path)
        assert _synchronous(path) == "FULL", name
        assert str(path) not in instance_sqlite.kept_files(), name
    # An instance file not yet in WAL mode (Dagster initialises it on first use) waits.
    fresh = tmp_path / "fresh" / "history" / "runs.db"
    fresh.parent.mkdir(parents=True)
    sqlite3.connect(fresh).execute("CREATE TABLE t (x TEXT)").connection.commit()
    assert _synchronous(fresh) == "FULL"
    assert str(fresh) not in instance_sqlite.kept_files()


def test_at_most_keep_open_files_are_held_newest_first(tmp_path: Path):
    indexes = [tmp_path / f"instance-{i:02d}" / "history" / "runs" / "index.db"
               for i in range(instance_sqlite.KEEP_OPEN + 4)]
    for index in indexes:
        index.parent.mkdir(parents=True)
        _wal_mode(index)
        assert _synchronous(index) == "NORMAL"
    kept = instance_sqlite.kept_files()
    assert len(kept) == instance_sqlite.KEEP_OPEN
    assert kept == [str(s) for s in indexes[-instance_sqlite.KEEP_OPEN:]]


def _rows(path: Path) -> int:
    with sqlite3.connect(path) as connection:
        return connection.execute("SELECT count(*) FROM t").fetchone()[0]


def _write(path: Path, rows: int) -> None:
    engine = create_engine(f"sqlite:///{path}")  # a tuned connection, as Dagster's
    with engine.begin() as connection:
        for _ in range(rows):
            connection.execute(text("INSERT INTO t VALUES ('x')"))
    engine.dispose()


def test_a_folder_restored_under_the_same_name_keeps_its_log(tmp_path: Path):
    """The test suite's saved states: an instance folder deleted and a copy put back at the
    same path. Its copied log holds commits not yet in the database file; the last close of
    the connection held to the deleted file must not checkpoint or delete the new file's log
    (SQLite sees the file moved and leaves both alone)."""
    shard = tmp_path / "work" / "history" / "runs" / "index.db"
    shard.parent.mkdir(parents=True)
    _wal_mode(shard)
    _write(shard, 5)
    assert str(shard) in instance_sqlite.kept_files()
    assert Path(f"{shard}-wal").stat().st_size > 0  # the rows are in the log, held open
    saved = tmp_path / "saved"
    shutil.copytree(tmp_path / "work", saved)
    shutil.rmtree(tmp_path / "work")
    shutil.copytree(saved, tmp_path / "work")
    # Other files push the stale connection out before the restored file is used again.
    others = [tmp_path / f"other-{i}" / "schedules" / "schedules.db"
              for i in range(instance_sqlite.KEEP_OPEN)]
    for other in others:
        other.parent.mkdir(parents=True)
        _wal_mode(other)
        _synchronous(other)
    assert str(shard) not in instance_sqlite.kept_files()
    assert Path(f"{shard}-wal").exists()
    assert _rows(shard) == 5
    _write(shard, 1)
    assert _rows(shard) == 6


WRITER = textwrap.dedent("""
    import os, signal, sys
    import dagster as dg
    import unified_assets.definitions  # installs the tuning, as every code-location process

    @dg.asset(partitions_def=dg.StaticPartitionsDefinition([str(i) for i in range(6)]))
    def part(context) -> int:
        return int(context.partition_key)

    instance = dg.DagsterInstance.local_temp(tempdir=sys.argv[1])
    ids = [dg.materialize([part], instance=instance, partition_key=str(i)).run_id
           for i in range(6)]
    print(",".join(ids), flush=True)
    os.kill(os.getpid(), signal.SIGKILL)  # no clean shutdown: nothing closed or flushed
""")


def test_a_sigkilled_process_loses_no_committed_event(tmp_path: Path):
    done = subprocess.run([sys.executable, "-c", WRITER, str(tmp_path)], capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == -9, done.stderr[-2000:]
    run_ids = done.stdout.strip().split(",")
    assert len(run_ids) == 6
    with dg.instance_for_test(temp_dir=str(tmp_path)) as instance:
        for run_id in run_ids:
            assert instance.get_run_by_id(run_id).status == dg.DagsterRunStatus.SUCCESS
        records = instance.fetch_materializations(dg.AssetKey("part"), limit=100).records
        assert sorted(int(r.partition_key) for r in records) == list(range(6))


def _child(temp_dir: str, queue) -> None:
    inherited = instance_sqlite.kept_files()
    with dg.instance_for_test(temp_dir=temp_dir) as instance:
        run_id = dg.materialize([tiny], instance=instance).run_id
    queue.put((inherited, run_id, instance_sqlite.kept_files()))


def test_a_forked_child_holds_its_own_files_and_its_parent_reads_them(tmp_path: Path):
    with dg.instance_for_test(temp_dir=str(tmp_path)) as instance:
        assert dg.materialize([tiny], instance=instance).success
        assert instance_sqlite.kept_files()
        context = multiprocessing.get_context("fork")
        queue = context.Queue()
        child = context.Process(target=_child, args=(str(tmp_path), queue))
        child.start()
        inherited, run_id, child_kept = queue.get(timeout=120)
        child.join(timeout=60)
        assert child.exitcode == 0
        assert inherited == []  # closed before the fork: nothing is open across it
        assert str(tmp_path / "history" / "runs" / "index.db") in child_kept
        assert instance.get_run_by_id(run_id).status == dg.DagsterRunStatus.SUCCESS
        assert dg.materialize([tiny], instance=instance).success
        assert str(tmp_path / "history" / "runs" / "index.db") in instance_sqlite.kept_files()


def _commit_twice(path: str, first_done, go_on, done) -> None:
    connection = sqlite3.connect(path)
    connection.execute("INSERT INTO t VALUES ('child 1')")
    connection.commit()
    first_done.set()
    go_on.wait(60)
    connection.execute("INSERT INTO t VALUES ('child 2')")
    connection.commit()
    done.set()


def test_a_commit_in_a_forked_child_survives_its_parent_letting_go(tmp_path: Path):
    """Found in review: a connection held across a fork gave the child SQLite's lock state
    for the file; once the parent let go, a third process's close deleted the log the child
    still wrote to, and the child's next commit was lost."""
    index = tmp_path / "history" / "runs" / "index.db"
    index.parent.mkdir(parents=True)
    _wal_mode(index)
    assert _synchronous(index) == "NORMAL" and str(index) in instance_sqlite.kept_files()
    context = multiprocessing.get_context("fork")
    first_done, go_on, done = context.Event(), context.Event(), context.Event()
    child = context.Process(target=_commit_twice, args=(str(index), first_done, go_on, done))
    child.start()
    assert first_done.wait(60)
    instance_sqlite.release_all()  # the parent lets go (eviction, exit)
    third = subprocess.run([sys.executable, "-c", "import sqlite3, sys; "
                            "sqlite3.connect(sys.argv[1]).execute('SELECT count(*) FROM t').fetchall()",
                            str(index)], timeout=60)
    assert third.returncode == 0
    go_on.set()
    assert done.wait(60)
    child.join(timeout=60)
    counted = subprocess.run([sys.executable, "-c", "import sqlite3, sys; print(sqlite3.connect("
                              "sys.argv[1]).execute('SELECT count(*) FROM t').fetchone()[0])",
                              str(index)], capture_output=True, text=True, timeout=60)
    assert counted.stdout.strip() == "2"


UNTUNED = textwrap.dedent("""
    import sys
    import dagster as dg
    from sqlalchemy import create_engine, text
    import unified_assets.definitions  # install() reads UNIFIED_AI_SQLITE_TUNING
    from unified_assets import instance_sqlite

    @dg.asset
    def one() -> int:
        return 1

    instance = dg.DagsterInstance.local_temp(tempdir=sys.argv[1])
    assert dg.materialize([one], instance=instance).success
    engine = create_engine(f"sqlite:///{sys.argv[1]}/history/runs.db")
    with engine.connect() as connection:
        print(connection.execute(text("PRAGMA synchronous")).scalar(), instance_sqlite.kept_files())
""")


def test_the_tuning_can_be_turned_off(tmp_path: Path):
    env = {**os.environ, instance_sqlite.TUNING_ENV: "off"}
    done = subprocess.run([sys.executable, "-c", UNTUNED, str(tmp_path)], capture_output=True,
                          text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["2", "[]"]  # FULL, as Dagster leaves it; nothing held
