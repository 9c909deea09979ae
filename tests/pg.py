"""A throwaway PostgreSQL 15 cluster on loopback for tests: real SQL, no mocks.

    with postgres_cluster() as url:          # postgresql+psycopg2://postgres@127.0.0.1:PORT/postgres
        db_url = create_database(url, "t1")  # a fresh, empty database on it

or, in a test module (one cluster per module: it starts in about a second):

    postgres = pytest.fixture(scope="module")(postgres_fixture)

The server never runs as root: under root (the test machines) initdb and pg_ctl run as the
`postgres` user through `runuser`, in a temporary folder owned by it; as another user, as that
user. A cluster whose test process was killed before stopping it is stopped by the next
start. Trust authentication, listening only on 127.0.0.1 and a socket in the folder; durability
off (fsync), since the cluster dies with the test. Without PostgreSQL binaries (searched in
/usr/lib/postgresql/15/bin, then PATH) the tests that ask for it are skipped, saying why.
"""

from __future__ import annotations

import os
import pwd
import shlex
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

PG_BIN_DIRS = ("/usr/lib/postgresql/15/bin",)
START_TIMEOUT_S = 60
FOLDER_PREFIX = "unified-ai-pg-"


def postgres_bindir() -> Path | None:
    """The folder holding initdb and pg_ctl, or None."""
    for folder in PG_BIN_DIRS:
        if (Path(folder) / "initdb").exists() and (Path(folder) / "pg_ctl").exists():
            return Path(folder)
    initdb, pg_ctl = shutil.which("initdb"), shutil.which("pg_ctl")
    if initdb and pg_ctl and Path(initdb).resolve().parent == Path(pg_ctl).resolve().parent:
        return Path(initdb).resolve().parent
    return None


def _sweep_orphans(bindir: Path, prefix: list[str]) -> None:
    """Stop and delete clusters left by test processes that died before their teardown (a
    killed pytest): each cluster's folder names its owner's pid; a live owner's is left alone."""
    for folder in Path(tempfile.gettempdir()).glob(f"{FOLDER_PREFIX}*"):
        try:
            owner_pid = int((folder / "owner.pid").read_text())
            os.kill(owner_pid, 0)
            continue  # its owner is alive (another test process)
        except ProcessLookupError:
            pass
        except (OSError, ValueError):
            continue  # not ours to judge (no readable pid file yet, or another user's)
        if (folder / "data" / "postmaster.pid").exists():
            subprocess.run([*prefix, str(bindir / "pg_ctl"), "-D", str(folder / "data"), "-m",
                            "immediate", "-w", "stop"], cwd=folder, capture_output=True,
                           timeout=START_TIMEOUT_S)
        shutil.rmtree(folder, ignore_errors=True)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextmanager
def postgres_cluster() -> Iterator[str]:
    """Start a fresh cluster; yield its SQLAlchemy URL; stop it and delete its folder.
    pytest.skip when this machine has no PostgreSQL binaries (or, as root, no postgres user)."""
    bindir = postgres_bindir()
    if bindir is None:
        pytest.skip("PostgreSQL 15 binaries (initdb, pg_ctl) not found in "
                    f"{', '.join(PG_BIN_DIRS)} or on PATH; install postgresql-15 to run these tests")
    prefix: list[str] = []
    owner: pwd.struct_passwd | None = None
    if os.geteuid() == 0:  # PostgreSQL refuses root, and it must never run as root anyway
        try:
            owner = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no `postgres` user to run PostgreSQL as")
        prefix = ["runuser", "-u", "postgres", "--"]
    _sweep_orphans(bindir, prefix)
    folder = Path(tempfile.mkdtemp(prefix=FOLDER_PREFIX))
    data, log = folder / "data", folder / "server.log"
    (folder / "owner.pid").write_text(str(os.getpid()))
    if owner is not None:
        os.chown(folder, owner.pw_uid, owner.pw_gid)
    folder.chmod(0o700)

    def run(*args: str) -> None:
        # cwd: the folder, which the postgres user can enter (the repository may not be).
        subprocess.run([*prefix, *args], cwd=folder, check=True, capture_output=True, text=True,
                       timeout=START_TIMEOUT_S)

    started = False
    try:
        try:
            run(str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust",
                "--encoding=UTF8", "--locale=C", "--no-sync")
            for _attempt in range(3):  # the port was free when probed; another may take it first
                port = _free_port()
                options = (f"-c listen_addresses=127.0.0.1 -p {port} -k {shlex.quote(str(folder))} "
                           "-c fsync=off -c synchronous_commit=off -c full_page_writes=off")
                try:
                    run(str(bindir / "pg_ctl"), "-D", str(data), "-l", str(log), "-w",
                        "-t", str(START_TIMEOUT_S), "-o", options, "start")
                    started = True
                    break
                except subprocess.CalledProcessError:
                    if "could not bind" not in (log.read_text() if log.exists() else ""):
                        raise
        except subprocess.CalledProcessError as error:
            server_log = log.read_text() if log.exists() else ""
            raise RuntimeError(f"{shlex.join(error.cmd)} failed: {error.stderr}\n{server_log}") from None
        if not started:
            raise RuntimeError(f"PostgreSQL found no free port; its log:\n{log.read_text()}")
        yield f"postgresql+psycopg2://postgres@127.0.0.1:{port}/postgres"
    finally:
        if started:
            subprocess.run([*prefix, str(bindir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w",
                            "stop"], cwd=folder, capture_output=True, timeout=START_TIMEOUT_S)
        shutil.rmtree(folder, ignore_errors=True)


def postgres_fixture() -> Iterator[str]:
    """Body of a pytest fixture yielding a cluster's URL; give it a scope where it is used:
    `postgres = pytest.fixture(scope="module")(postgres_fixture)`."""
    with postgres_cluster() as url:
        yield url


def create_database(url: str, name: str) -> str:
    """Create an empty database `name` on the cluster at `url`; its URL. Tests sharing a
    cluster each take their own database, so none sees another's tables."""
    import sqlalchemy as sa

    engine = sa.create_engine(url, isolation_level="AUTOCOMMIT")  # CREATE DATABASE: no transaction
    try:
        with engine.connect() as conn:
            conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    finally:
        engine.dispose()
    return sa.engine.make_url(url).set(database=name).render_as_string(hide_password=False)
