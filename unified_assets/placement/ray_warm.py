"""Warm step processes for Ray jobs: each step is still its own Ray job, but the job's
entrypoint is this small client, which has the step run in a process forked from a server on
the same machine that already imported the heavy libraries (Dagster, MLflow, torch,
scikit-learn). A fresh interpreter per step paid those imports again for every step, seconds
each on two cores (bench/RESULTS.md, "Ray runtime"); the multiprocess executor's forkserver
pays them once per run.

What stays as it was: the Ray job holds the step's request (CPUs, GPUs, memory, labels) for
as long as the step runs, Ray's CUDA_VISIBLE_DEVICES and the job's whole environment reach the
step, its output goes to the job's log (the client's stdio is passed over the socket), and the
job's exit code is the step's (an out-of-memory exit 75, or 137 for a kill, still reads as
such to the step handler). Stopping the job (or losing the client) kills the step.

Why not a library: Python's `multiprocessing.forkserver` forks only its own `Process` targets
in a fresh session per parent and cannot hand a child another process's stdio and
environment; Ray's own worker reuse needs the step to be a Ray task, not a job.

Safety: the server preloads libraries only, never the code location (which reads its
settings when imported), so a step always imports the user's code fresh. A server serves only
requests from the same Python, working directory and environment (minus the per-job and
per-run variables in `PER_STEP_ENV`); before each fork it re-checks the files of every module
it loaded and refuses (the client then runs cold and the next job starts a new server) once
one changed. Its socket lives in a folder only this user can open. It exits when idle
(`IDLE_ENV`, 30 minutes) or when the Ray cluster it served is gone. Any failure on this path
runs the step the old way, in a fresh interpreter; `UNIFIED_AI_RAY_WARM=off` always does.

Only the standard library is imported here at module level: the client must start fast."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import select
import signal
import socket
import stat
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NoReturn

SWITCH_ENV = "UNIFIED_AI_RAY_WARM"  # "off": every step in a fresh interpreter
PRELOAD_ENV = "UNIFIED_AI_RAY_PRELOAD"  # comma-separated modules the server imports
IDLE_ENV = "UNIFIED_AI_RAY_WARM_IDLE_S"
DIR_ENV = "UNIFIED_AI_RAY_WARM_DIR"  # where the sockets live (default /tmp/unified-ai-ray-warm-UID)
SERVER_ENV = "UNIFIED_AI_RAY_WARM_SERVER"  # set in a warm step: the server's pid
DEFAULT_IDLE_S = 1800.0  # a run every half hour stays warm; ~0.5 GB held meanwhile
# What every Dagster step process imports before the step's own code: the CLI, the instance's
# storage (SQLite here, Postgres in production; alembic checks the schema), execution. A
# module missing from this install is skipped. Found by listing what warm steps imported
# after the fork: 487 modules, 1.1 s to STEP_WORKER_STARTED, before these were preloaded.
BASE_PRELOAD = (
    "dagster", "dagster._cli", "dagster._cli.api", "dagster._core.instance.factory",
    "dagster._core.storage.sqlite_storage", "dagster._core.storage.event_log.sqlite",
    "dagster._core.storage.runs.sqlite", "dagster._core.storage.schedules.sqlite",
    "dagster._core.storage.local_compute_log_manager", "dagster._daemon", "dagster._scheduler",
    "dagster._utils.test.definitions", "dagster_postgres", "alembic.command", "alembic.config",
    "alembic.runtime.migration", "upath", "upath.implementations.local",
    "fsspec.implementations.local", "watchdog.observers", "rich", "structlog", "urllib.request",
    "dagster._core.execution.plan.active", "dagster._core.storage.migration.utils",
    "dagster._core.storage.root", "dagster._core.workspace.autodiscovery",
    "dagster._core.definitions.external_asset", "dagster._core.system_config.composite_descent",
    "dagster._core.definitions.repository_definition.repository_data_builder",
)
# Set per job or per run (Ray's job config, the GPU ids, the step's args and decision, the
# run's Dagster and project settings): they may differ between requests one server serves.
# None of them is read by a library when it is imported; our own code, which reads the
# UNIFIED_AI_ settings, is imported by each step after the fork.
PER_STEP_ENV = frozenset({"RAY_JOB_CONFIG_JSON_ENV_VAR", "CUDA_VISIBLE_DEVICES", "DAGSTER_HOME",
                          "DAGSTER_RUN_JOB_NAME", "DAGSTER_RUN_STEP_KEY",
                          "DAGSTER_COMPRESSED_EXECUTE_STEP_ARGS", "DAGSTER_EXECUTE_STEP_ARGS",
                          "_", "OLDPWD"})
PER_STEP_PREFIXES = ("UNIFIED_AI_",)
HEADER = struct.Struct("!I")
GRACE_S = 10.0  # after a stop request: SIGTERM, then SIGKILL this much later
TERMINATE = b"T"  # client -> server: Ray is stopping the job; signal the step as Ray would
CLUSTER_CHECK_S = 10.0


class WarmUnavailable(Exception):
    """The warm path cannot run this step; it runs in a fresh interpreter instead."""


def enabled(environ: Mapping[str, str]) -> bool:
    return environ.get(SWITCH_ENV, "on").strip().lower() not in ("off", "0", "false", "no")


def is_dagster_step(argv: Sequence[str]) -> bool:
    """Only `<python> -m dagster api execute_step` is ever run by a server."""
    return list(argv[1:5]) == ["-m", "dagster", "api", "execute_step"]


def key_env(environ: Mapping[str, str]) -> dict[str, str]:
    return {k: v for k, v in environ.items()
            if k not in PER_STEP_ENV and not k.startswith(PER_STEP_PREFIXES)}


def server_key(argv: Sequence[str], environ: Mapping[str, str], cwd: str) -> str:
    """Requests with the same Python, folder and (library-relevant) environment share one."""
    blob = json.dumps([os.path.realpath(argv[0]), cwd, sorted(key_env(environ).items())])
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def socket_dir() -> Path:
    """This user's folder for the servers' sockets, created 0700; refused unless it is ours,
    a real folder, and closed to others (a socket there runs code as this user). Under /tmp,
    not TMPDIR: a socket's path is limited to 107 bytes (`DIR_ENV` moves it)."""
    path = Path(os.environ.get(DIR_ENV) or f"/tmp/unified-ai-ray-warm-{os.getuid()}")
    with contextlib.suppress(FileExistsError):
        path.mkdir(mode=0o700)
    info = os.lstat(path)
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid() \
            or stat.S_IMODE(info.st_mode) & 0o077:
        raise WarmUnavailable(f"{path} is not a folder only this user can open")
    return path


# --- the wire: a 4-byte length, then JSON; the first message of a request carries the fds.

def send_message(sock: socket.socket, message: Mapping[str, object],
                 fds: Sequence[int] = ()) -> None:
    data = json.dumps(message).encode()
    frame = HEADER.pack(len(data)) + data
    if fds:
        sent = socket.send_fds(sock, [frame], list(fds))
        frame = frame[sent:]
    sock.sendall(frame)


def _read_exact(sock: socket.socket, size: int, start: bytes = b"") -> bytes:
    buf = bytearray(start)
    while len(buf) < size:
        chunk = sock.recv(size - len(buf))
        if not chunk:
            raise ConnectionError("connection closed mid-message")
        buf += chunk
    return bytes(buf)


def recv_message(sock: socket.socket, max_fds: int = 0) -> tuple[dict, list[int]]:
    fds: list[int] = []
    if max_fds:
        first, fds, _, _ = socket.recv_fds(sock, 65536, max_fds)
        if not first:
            raise ConnectionError("connection closed")
    else:
        first = b""
    head = _read_exact(sock, HEADER.size, first[:HEADER.size])
    (size,) = HEADER.unpack(head)
    body = _read_exact(sock, size, first[HEADER.size:])
    return json.loads(body), fds


# --- the client: the Ray job's entrypoint.

def _run_cold(argv: Sequence[str], why: str) -> NoReturn:
    print(f"unified-ai: step runs in a fresh interpreter ({why})", file=sys.stderr, flush=True)
    os.execv(argv[0], list(argv))


def _spawn_server(key: str, argv: Sequence[str], folder: Path) -> None:
    """Start a server for `key` in its own session (Ray's cleanup of this job's process group
    must not end it); its preload comes from PRELOAD_ENV. Output goes to a log beside it."""
    env = key_env(os.environ)  # no run's or step's settings: the server never reads them
    env.update({k: os.environ[k] for k in (PRELOAD_ENV, DIR_ENV, IDLE_ENV) if k in os.environ})
    log = open(folder / f"{key}.log", "ab")  # noqa: SIM115 - handed to the child
    subprocess.Popen([argv[0], os.path.abspath(__file__), "--serve", key], env=env,
                     start_new_session=True, stdin=subprocess.DEVNULL, stdout=log,
                     stderr=subprocess.STDOUT, close_fds=True)
    log.close()


def client_main(argv: Sequence[str]) -> int:
    """Run the step `argv` in a warm process, or else exec it here."""
    if not enabled(os.environ):
        os.execv(argv[0], list(argv))
    if not is_dagster_step(argv):
        _run_cold(argv, "not a Dagster step command")
    try:
        folder = socket_dir()
    except (OSError, WarmUnavailable) as error:
        _run_cold(argv, f"warm servers unavailable: {error}")
    key = server_key(argv, os.environ, os.getcwd())
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(str(folder / f"{key}.sock"))
        send_message(sock, {"key": key, "argv": list(argv), "cwd": os.getcwd(),
                            "env": dict(os.environ)}, fds=(0, 1, 2))
        reply, _ = recv_message(sock)
    except (OSError, ConnectionError, ValueError):
        sock.close()
        with contextlib.suppress(OSError):
            if not _server_lock_held(folder, key):
                _spawn_server(key, argv, folder)
        _run_cold(argv, "no warm server yet on this machine; one is starting for the next steps")
    if "pid" not in reply:
        sock.close()
        _run_cold(argv, f"warm server refused: {reply.get('refused', reply)}")
    print(f"unified-ai: step runs in process {reply['pid']}, forked from warm server "
          f"{reply['server']} (libraries preloaded)", file=sys.stderr, flush=True)
    return _await_exit(sock)


def _server_lock_held(folder: Path, key: str) -> bool:
    with open(folder / f"{key}.lock", "a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(lock, fcntl.LOCK_UN)
        return False


def _await_exit(sock: socket.socket) -> int:
    """Wait for the step's exit code. A stop signal (Ray stopping the job) asks the server to
    SIGTERM the step, as Ray would have signalled it; this process's parent going away (the
    job's node lost) ends the step at once, as Ray's `kill -9` of the job's processes would.
    Either way the server still reports how the step ended."""
    stopping = threading.Event()

    def stop(graceful: bool) -> None:
        if not stopping.is_set():
            stopping.set()
            with contextlib.suppress(OSError):
                if graceful:
                    sock.sendall(TERMINATE)
                sock.shutdown(socket.SHUT_WR)

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, lambda *_: stop(graceful=True))
    parent = os.getppid()

    def watch_parent() -> None:
        while not stopping.is_set():
            time.sleep(1.0)
            if os.getppid() != parent:
                stop(graceful=False)

    threading.Thread(target=watch_parent, daemon=True).start()
    try:
        reply, _ = recv_message(sock)
    except (OSError, ConnectionError, ValueError):
        print("unified-ai: the warm server went away before the step ended", file=sys.stderr,
              flush=True)
        return 1
    code = int(reply.get("exit", 1))
    return code if code >= 0 else 128 - code  # killed by signal N: 128 + N, as a shell says


# --- the server.

@dataclass
class _Child:
    conn: socket.socket
    kill_at: float | None = None


@dataclass
class _Server:
    key: str
    folder: Path
    listener: socket.socket | None = None
    socket_inode: int = 0  # of our socket's file: unlink it only while it is still ours
    files: dict[str, tuple[int, int]] = field(default_factory=dict)
    children: dict[int, _Child] = field(default_factory=dict)
    idle_s: float = DEFAULT_IDLE_S
    last_active: float = field(default_factory=time.monotonic)
    stale: str | None = None

    def changed_file(self) -> str | None:
        for path, seen in self.files.items():
            try:
                info = os.stat(path)
            except OSError:
                return path
            if (info.st_mtime_ns, info.st_size) != seen:
                return path
        return None


def _loaded_files() -> dict[str, tuple[int, int]]:
    out = {}
    for module in list(sys.modules.values()):
        path = getattr(module, "__file__", None)
        if path:
            with contextlib.suppress(OSError):
                info = os.stat(path)
                out[path] = (info.st_mtime_ns, info.st_size)
    return out


def _preload(modules: Sequence[str]) -> list[str]:
    import importlib

    failed = []
    for name in modules:
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as error:
            if error.name != name:  # not the module itself: something it needs is broken
                failed.append(f"{name} ({type(error).__name__}: {error})")
        except Exception as error:  # as multiprocessing's forkserver: the step imports it
            failed.append(f"{name} ({type(error).__name__}: {error})")
    return failed


def _cluster_alive() -> bool:
    """The Ray cluster (RAY_ADDRESS, the GCS host:port Ray gives a job) still answers."""
    address = os.environ.get("RAY_ADDRESS", "")
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        return True
    try:
        with socket.create_connection((host, int(port)), timeout=3):
            return True
    except OSError:
        return False


def server_main(key: str) -> int:
    folder = socket_dir()
    lock = open(folder / f"{key}.lock", "a")  # noqa: SIM115 - held for the server's life
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return 0  # another server for this key is starting or serving
    preload = [*BASE_PRELOAD, *filter(None, os.environ.get(PRELOAD_ENV, "").split(","))]
    started = time.monotonic()
    failed = _preload(preload)
    server = _Server(key=key, folder=folder, files=_loaded_files(),
                     idle_s=float(os.environ.get(IDLE_ENV, DEFAULT_IDLE_S)))
    print(f"warm server {os.getpid()} for {key}: preloaded {len(preload)} modules in "
          f"{time.monotonic() - started:.1f} s" + (f"; skipped {failed}" if failed else ""),
          flush=True)
    path = folder / f"{key}.sock"
    tmp = folder / f"{key}.{os.getpid()}.tmp"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(tmp))
    os.chmod(tmp, 0o600)
    listener.listen(16)
    server.socket_inode = os.stat(tmp).st_ino
    os.replace(tmp, path)  # clients see the socket only once the preload is done
    server.listener = listener
    try:
        _serve(server, lock)
    finally:
        _stop_listening(server, path)
    return 0


def _stop_listening(server: _Server, path: Path) -> None:
    if server.listener is not None:
        with contextlib.suppress(OSError):
            if os.stat(path).st_ino == server.socket_inode:
                path.unlink()
        server.listener.close()
        server.listener = None


def _serve(server: _Server, lock: object) -> None:
    next_cluster_check = time.monotonic() + CLUSTER_CHECK_S
    path = server.folder / f"{server.key}.sock"
    while True:
        # A client already gone stays readable (EOF): not watched again, or this would spin.
        watched = [c.conn for c in server.children.values() if c.kill_at is None]
        if server.listener is not None:
            watched.append(server.listener)
        readable, _, _ = select.select(watched, [], [], 0.5)
        for sock in readable:
            if sock is server.listener:
                _accept(server, lock)
            else:
                _client_gone(server, sock)
        _reap(server)
        now = time.monotonic()
        for pid, child in server.children.items():
            if child.kill_at is not None and now >= child.kill_at:
                with contextlib.suppress(OSError):
                    os.killpg(pid, signal.SIGKILL)
        if server.stale and server.listener is not None:
            print(f"warm server {os.getpid()}: {server.stale}; not serving again", flush=True)
            _stop_listening(server, path)
            fcntl.flock(lock, fcntl.LOCK_UN)  # a new server may start at once
        if now >= next_cluster_check:
            next_cluster_check = now + CLUSTER_CHECK_S
            if not _cluster_alive():
                print(f"warm server {os.getpid()}: the Ray cluster is gone; exiting", flush=True)
                for pid in server.children:
                    with contextlib.suppress(OSError):
                        os.killpg(pid, signal.SIGKILL)
                return
        if not server.children and (server.listener is None
                                    or now - server.last_active > server.idle_s):
            return


def _accept(server: _Server, lock: object) -> None:
    assert server.listener is not None
    conn, _ = server.listener.accept()
    server.last_active = time.monotonic()
    fds: list[int] = []
    try:
        creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        _, peer_uid, _ = struct.unpack("3i", creds)
        if peer_uid != os.getuid():  # the folder is 0700 already; a second lock on the door
            raise WarmUnavailable(f"a connection from uid {peer_uid}")
        conn.settimeout(10)
        request, fds = recv_message(conn, max_fds=3)
        conn.settimeout(None)
        refused = _refusal(server, request, fds)
        if refused:
            send_message(conn, {"refused": refused})
            raise WarmUnavailable(refused)
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            _child(server, request, fds, conn, lock)
        with contextlib.suppress(OSError):  # as the child does: no window without a group
            os.setpgid(pid, pid)
        server.children[pid] = _Child(conn)
        send_message(conn, {"pid": pid, "server": os.getpid()})
    except (OSError, ConnectionError, ValueError, WarmUnavailable):
        conn.close()
    finally:
        for fd in fds:
            os.close(fd)


def _refusal(server: _Server, request: dict, fds: list[int]) -> str | None:
    argv = request.get("argv") or []
    if request.get("key") != server.key or len(fds) != 3 or not is_dagster_step(argv):
        return "malformed request"
    if server_key(argv, request.get("env") or {}, request.get("cwd") or "") != server.key:
        return "another Python, folder or environment than this server's"
    changed = server.changed_file()
    if changed:
        server.stale = f"{changed} changed since it was preloaded"
        return server.stale
    return None


def _child(server: _Server, request: dict, fds: list[int], conn: socket.socket,
           lock: object) -> None:
    """In the forked step process: the client's stdio, folder and environment, then Dagster's
    `api execute_step`, and exit with its code. Never returns."""
    code = 1
    try:
        os.setpgid(0, 0)  # the server ends the step's whole group when its client goes away
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD):
            signal.signal(signum, signal.SIG_DFL)
        if server.listener is not None:
            server.listener.close()
        for child in server.children.values():
            child.conn.close()
        conn.close()
        lock.close()  # type: ignore[attr-defined]
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        os.environ[SERVER_ENV] = str(os.getppid())
        _exit_with_server(os.getppid())
        from dagster._cli import main as dagster_main

        sys.argv = ["dagster", *request["argv"][3:]]
        try:
            dagster_main()
            code = 0
        except SystemExit as done:
            code = done.code if isinstance(done.code, int) else (0 if done.code is None else 1)
    except BaseException:
        import traceback

        traceback.print_exc()
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)


def _exit_with_server(server_pid: int) -> None:
    """A step whose server is gone has nobody to report to: it ends too."""
    def watch() -> None:
        while os.getppid() == server_pid:
            time.sleep(1.0)
        os._exit(137)

    threading.Thread(target=watch, name="warm-server-watch", daemon=True).start()


def _client_gone(server: _Server, conn: socket.socket) -> None:
    """The client asked to stop the step (`TERMINATE`: SIGTERM, SIGKILL after GRACE_S), or
    vanished (killed with its job, or its node lost): SIGKILL at once, as Ray kills a job's
    processes, so the step writes nothing more (a lost node's step is retried elsewhere)."""
    for pid, child in server.children.items():
        if child.conn is conn and child.kill_at is None:
            try:
                data = conn.recv(16)
            except OSError:
                data = b""
            graceful = TERMINATE in data
            with contextlib.suppress(OSError):
                os.killpg(pid, signal.SIGTERM if graceful else signal.SIGKILL)
            child.kill_at = time.monotonic() + (GRACE_S if graceful else 0.0)
            return


def _reap(server: _Server) -> None:
    while server.children:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        child = server.children.pop(pid, None)
        if child is None:
            continue
        server.last_active = time.monotonic()
        with contextlib.suppress(OSError):
            send_message(child.conn, {"exit": os.waitstatus_to_exitcode(status)})
        child.conn.close()


def main(argv: Sequence[str]) -> int:
    if len(argv) == 2 and argv[0] == "--serve":
        return server_main(argv[1])
    if not argv:
        print("usage: ray_warm.py <python> -m dagster api execute_step | --serve KEY",
              file=sys.stderr)
        return 2
    return client_main(argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
