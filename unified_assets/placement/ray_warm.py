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
(`IDLE_ENV`, 30 minutes), or once its running steps end after the Ray cluster it served stopped
answering. Any failure on this path runs the step the old way, in a fresh interpreter;
`UNIFIED_AI_RAY_WARM=off` always does. The server is detached (double fork): stopping the job
that happened to start it must not end it.

The same server also starts local run processes and forkservers (unified_assets/local_warm.py):
there the client stands in for Python (`--python`), and only multiprocessing's own start
commands (spawn, forkserver) are run warm, in a fork given every fd the client was started
with, on the same numbers, and only when the interpreter flags match the server's. Run
processes connect to "<key>.early", a name the socket gets once BASE_PRELOAD is in; the
server then imports the rest one module at a time while no request waits, and names the
socket "<key>.sock" (for steps and forkservers) once all are in.

Only the standard library is imported here at module level: the client must start fast."""

from __future__ import annotations

import contextlib
import fcntl
import gc
import hashlib
import json
import os
import re
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
from typing import IO, NoReturn

SWITCH_ENV = "UNIFIED_AI_RAY_WARM"  # "off": every step in a fresh interpreter
PRELOAD_ENV = "UNIFIED_AI_RAY_PRELOAD"  # comma-separated modules (or module:function) to preload
IDLE_ENV = "UNIFIED_AI_RAY_WARM_IDLE_S"
DIR_ENV = "UNIFIED_AI_RAY_WARM_DIR"  # where the sockets live (default /tmp/unified-ai-ray-warm-UID)
SERVER_ENV = "UNIFIED_AI_RAY_WARM_SERVER"  # set in a warm step: the server's pid
# A pid: the server stops serving once that process has exited (scripts/dev.sh gives its own,
# so stopping the run command ends the local server too).
OWNER_ENV = "UNIFIED_AI_WARM_OWNER"
# The settings above a user sets where Dagster runs: the step handler passes them to each job.
LAUNCH_SETTINGS_ENV = (SWITCH_ENV, DIR_ENV, IDLE_ENV)
DEFAULT_IDLE_S = 1800.0  # a run every half hour stays warm; ~0.6 GB held meanwhile
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
                          # what a shell sets as it starts (local_warm's launcher is one)
                          "_", "OLDPWD", "PWD", "SHLVL",
                          # Dagster sets it in each run and step process (the Snowflake
                          # connector reads it when it connects)
                          "SF_PARTNER",
                          # Ray's other accelerators' ids per job; read when a device is
                          # opened, never on import
                          "HIP_VISIBLE_DEVICES", "ROCR_VISIBLE_DEVICES",
                          "NEURON_RT_VISIBLE_CORES", "TPU_VISIBLE_CHIPS",
                          "ONEAPI_DEVICE_SELECTOR", "ASCEND_RT_VISIBLE_DEVICES",
                          "HABANA_VISIBLE_MODULES"})
PER_STEP_PREFIXES = ("UNIFIED_AI_",)
HEADER = struct.Struct("!I")
# After a stop request: SIGTERM, then SIGKILL this much later; Ray's job supervisor waits as
# long (RAY_JOB_STOP_WAIT_TIME_S, default 3 s) before it SIGKILLs a job's processes.
GRACE_S = float(os.environ.get("RAY_JOB_STOP_WAIT_TIME_S") or 3)
TERMINATE = b"T"  # client -> server: Ray is stopping the job; signal the step as Ray would
CLUSTER_CHECK_S = 10.0
CLUSTER_MISSES = 3  # checks in a row the cluster must fail before the server steps aside
ACCEPT_DEADLINE_S = 3.0  # a client has this long to send its request: one cannot stall all
SPAWN_BACKOFF_S = 60.0  # a server that failed to start is not started again sooner
# A forkserver started cold imports the very libraries a starting server is importing (seconds,
# beside it on the same cores): while one is starting for its key, it waits this long at most
# for its socket instead.
STARTING_WAIT_S = 60.0
KILLED = 137  # 128 + SIGKILL: what a step killed with its job or node exits with
SOCKET_NAME_MAX = 107  # bytes in an AF_UNIX path on Linux
TMP_NAME_LEN = 20 + 1 + 7 + 4  # "<key>.<pid>.tmp": the longest name bound in the folder
# Run processes connect here: the server's socket under a second name, given as soon as the
# server has imported BASE_PRELOAD; "<key>.sock" follows once the whole preload is in.
EARLY_SUFFIX = ".early"


class WarmUnavailable(Exception):
    """The warm path cannot run this step; it runs in a fresh interpreter instead."""


def enabled(environ: Mapping[str, str]) -> bool:
    return environ.get(SWITCH_ENV, "on").strip().lower() not in ("off", "0", "false", "no")


def is_dagster_step(argv: Sequence[str]) -> bool:
    """`<python> -m dagster api execute_step`: a Ray job's step."""
    return list(argv[1:5]) == ["-m", "dagster", "api", "execute_step"]


# What Python's multiprocessing runs to start a spawned child or a forkserver (CPython
# 3.11-3.13, `spawn.get_command_line` and `ForkServer.ensure_running`): the interpreter's
# flags (`-B` from PYTHONDONTWRITEBYTECODE...), then `-c` and the entry point; the named fds
# are the ones it passed. Only these exact forms are served (a local run process, a run's
# forkserver: unified_assets/local_warm.py), and only by a server whose own flags are the
# same; anything else runs as Python would.
_SPAWN = re.compile(r"from multiprocessing\.spawn import spawn_main; "
                    r"spawn_main\(tracker_fd=(\d+), pipe_handle=(\d+)\)")
_FORKSERVER = re.compile(r"from multiprocessing\.forkserver import main; "
                         r"main\((\d+), (\d+), (\[[^\]]*\]), \*\*(\{.*\})\)\Z", re.S)
MAX_PASSED_FDS = 64  # multiprocessing passes a few (its pipes, a Queue's ends); refused above


def inherited_fds() -> list[int]:
    """The fds this process was started with besides stdio: what multiprocessing passed
    (`spawnv_passfds`), named on the command line or only in the pickled process (a Queue's
    pipe). Python itself keeps none open after startup; the listing's own fd is closed again
    by the time each is checked."""
    listed = sorted(int(name) for name in os.listdir("/proc/self/fd"))
    return [fd for fd in listed if fd > 2 and _is_open(fd)]


def _is_open(fd: int) -> bool:
    try:
        fcntl.fcntl(fd, fcntl.F_GETFD)
    except OSError:
        return False
    return True


def _split_flags(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """(the interpreter flags, `-c` and what follows) of `<python> [flags] -c CODE ...`."""
    args = list(argv[1:])
    at = args.index("-c") if "-c" in args else len(args)
    return args[:at], args[at:]


def multiprocessing_command(argv: Sequence[str]) -> tuple[str, tuple[int, ...]] | None:
    """("spawn" | "forkserver", the fds it names) for a multiprocessing start command, or
    None for anything else."""
    flags, rest = _split_flags(argv)
    at = 0
    while at < len(flags):  # options, `-X opt` and `-W opt` (what _args_from_interpreter_flags gives)
        if not flags[at].startswith("-") or flags[at] == "-":
            return None
        at += 2 if flags[at] in ("-X", "-W") else 1
    if len(rest) == 3 and rest[0] == "-c" and rest[2] == "--multiprocessing-fork":
        found = _SPAWN.fullmatch(rest[1])
        if found:
            return "spawn", (int(found[1]), int(found[2]))
    if len(rest) == 2 and rest[0] == "-c":
        found = _FORKSERVER.match(rest[1])
        if found:
            return "forkserver", (int(found[1]), int(found[2]))
    return None


def is_servable(argv: Sequence[str]) -> bool:
    """A server runs only a Dagster step command or a multiprocessing start command."""
    return is_dagster_step(argv) or multiprocessing_command(argv) is not None


def key_env(environ: Mapping[str, str]) -> dict[str, str]:
    return {k: v for k, v in environ.items()
            if k not in PER_STEP_ENV and not k.startswith(PER_STEP_PREFIXES)}


def server_key(argv: Sequence[str], environ: Mapping[str, str], cwd: str) -> str:
    """Requests with the same Python, folder and (library-relevant) environment share one."""
    # abspath, not realpath: two virtualenvs link the same interpreter, with other packages.
    blob = json.dumps([os.path.abspath(argv[0]), cwd, sorted(key_env(environ).items())])
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
    if len(os.fsencode(path)) + 1 + TMP_NAME_LEN > SOCKET_NAME_MAX:
        raise WarmUnavailable(f"{path} is too long for a socket path ({SOCKET_NAME_MAX} bytes); "
                              f"set {DIR_ENV} to a shorter folder")
    return path


# --- the wire: a 4-byte length, then JSON; the first message of a request carries the fds.

def send_message(sock: socket.socket, message: Mapping[str, object],
                 fds: Sequence[int] = ()) -> None:
    data = json.dumps(message).encode()
    frame = HEADER.pack(len(data)) + data
    if fds:
        sent = socket.send_fds(sock, [frame], list(fds))
        frame = frame[sent:]
    if frame:  # nothing left must not be sent: the peer may have answered and closed already
        sock.sendall(frame)


def _until(sock: socket.socket, deadline: float | None) -> None:
    """The next read waits until `deadline` at most. Past it, what already waits in the socket
    is still read (a server starved of CPU is not a slow peer); only an empty socket fails
    (BlockingIOError)."""
    if deadline is not None:
        sock.settimeout(max(deadline - time.monotonic(), 0.0))


def _read_exact(sock: socket.socket, size: int, start: bytes = b"",
                deadline: float | None = None) -> bytes:
    buf = bytearray(start)
    while len(buf) < size:
        _until(sock, deadline)
        chunk = sock.recv(size - len(buf))
        if not chunk:
            raise ConnectionError("connection closed mid-message")
        buf += chunk
    return bytes(buf)


def recv_message(sock: socket.socket, max_fds: int = 0,
                 deadline: float | None = None) -> tuple[dict, list[int]]:
    """One message; with `deadline` (monotonic), all of it by then or TimeoutError."""
    fds: list[int] = []
    if max_fds:
        _until(sock, deadline)
        first, fds, _, _ = socket.recv_fds(sock, 65536, max_fds)
        if not first:
            for fd in fds:
                os.close(fd)
            raise ConnectionError("connection closed")
    else:
        first = b""
    try:
        head = _read_exact(sock, HEADER.size, first[:HEADER.size], deadline)
        (size,) = HEADER.unpack(head)
        body = _read_exact(sock, size, first[HEADER.size:], deadline)
        return json.loads(body), fds
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise


# --- the client: the Ray job's entrypoint, or multiprocessing's "Python" (local_warm).

def _run_cold(argv: Sequence[str], why: str, what: str = "step") -> NoReturn:
    print(f"unified-ai: {what} runs in a fresh interpreter ({why})", file=sys.stderr, flush=True)
    _exec(argv)


def _exec(argv: Sequence[str]) -> NoReturn:
    """Become `argv` as Python would have started it. A process forked from a server (a warm
    run process starting its forkserver) passes SERVER_ENV on; what starts fresh here was not
    forked from it, and its steps must not say so."""
    os.environ.pop(SERVER_ENV, None)
    os.execv(argv[0], list(argv))


def spawn_server(key: str, argv: Sequence[str], folder: Path) -> None:
    """Start a server for `key`, unless one is starting or serving (its lock is held) or one
    failed to start in the last `SPAWN_BACKOFF_S` (`<key>.spawned` stays until a server
    listens). The server detaches at once (`server_main`); its preload comes from
    PRELOAD_ENV and its output goes to a log beside its socket."""
    if _server_lock_held(folder, key):
        return
    marker = folder / f"{key}.spawned"
    with contextlib.suppress(OSError):
        if time.time() - marker.stat().st_mtime < SPAWN_BACKOFF_S:
            return
    marker.touch()
    env = key_env(os.environ)  # no run's or step's settings: the server never reads them
    env.update({k: os.environ[k] for k in (PRELOAD_ENV, DIR_ENV, IDLE_ENV, OWNER_ENV)
                if k in os.environ})
    with open(folder / f"{key}.log", "ab") as log:
        starter = subprocess.Popen([argv[0], os.path.abspath(__file__), "--serve", key],
                                   env=env, start_new_session=True, stdin=subprocess.DEVNULL,
                                   stdout=log, stderr=subprocess.STDOUT, close_fds=True)
    starter.wait(timeout=30)  # it forks the server and exits at once


@dataclass
class _StopRequest:
    """A stop signal may come before the server answered: remembered, then acted on."""
    requested: bool = False
    sock: socket.socket | None = None

    def request(self) -> None:
        self.requested = True
        self.forward()

    def forward(self) -> None:
        if self.requested and self.sock is not None:
            with contextlib.suppress(OSError):
                self.sock.sendall(TERMINATE)


def client_main(argv: Sequence[str]) -> int:
    """Run the step `argv` in a warm process, or else exec it here."""
    if not enabled(os.environ):
        _run_cold(argv, f"{SWITCH_ENV}={os.environ[SWITCH_ENV]}")
    if not is_dagster_step(argv):
        _run_cold(argv, "not a Dagster step command")
    return _run_warm(argv, (), "step")


def python_main(argv: Sequence[str]) -> int:
    """Stand in for the Python at argv[0] (`multiprocessing.set_executable`, `local_warm`): a
    multiprocessing start command runs in a warm process with the fds it names, anything
    else is that Python with these arguments."""
    found = multiprocessing_command(argv)
    if found is None:
        _exec(argv)
    try:
        passed = inherited_fds()
    except OSError as error:
        _run_cold(argv, f"its fds cannot be listed ({error})")
    if not set(found[1]) <= set(passed) or len(passed) > MAX_PASSED_FDS:
        _exec(argv)
    if found[0] == "spawn":  # a fresh run process costs less than most of a preload: no wait,
        # and it is served once Dagster is imported, between the imports of the rest
        return _run_warm(argv, passed, "run process", early=True)
    return _run_warm(argv, passed, "forkserver", STARTING_WAIT_S)


def _await_starting_server(folder: Path, key: str, patience_s: float) -> None:
    """Return once `key`'s server listens, or none is starting (its lock is free: not
    started, or it failed), or after `patience_s`."""
    sock = folder / f"{key}.sock"
    deadline = time.monotonic() + patience_s
    while not sock.exists() and time.monotonic() < deadline and _server_lock_held(folder, key):
        time.sleep(0.1)


def _run_warm(argv: Sequence[str], passed: Sequence[int], what: str,
              wait_s: float = 0.0, early: bool = False) -> int:
    try:
        folder = socket_dir()
    except (OSError, WarmUnavailable) as error:
        _run_cold(argv, f"warm servers unavailable: {error}", what)
    stop = _StopRequest()
    # Before connecting: a stop that comes while the request is under way is not lost.
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, lambda *_: stop.request())
    key = server_key(argv, os.environ, os.getcwd())
    if wait_s:
        _await_starting_server(folder, key, wait_s)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    connected, reply, no_answer = False, {}, None
    try:
        sock.connect(str(folder / f"{key}{EARLY_SUFFIX if early else '.sock'}"))
        connected = True
        send_message(sock, {"key": key, "argv": list(argv), "cwd": os.getcwd(),
                            "env": dict(os.environ), "fds": list(passed)},
                     fds=(0, 1, 2, *passed))
        reply, _ = recv_message(sock)
    except (OSError, ConnectionError, ValueError) as error:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            spawn_server(key, argv, folder)  # none starts while one holds the key's lock
        no_answer = (f"the warm server did not answer ({type(error).__name__}: {error})"
                     if connected else
                     "no warm server yet on this machine; one is starting for the next ones")
    if "pid" not in reply:
        sock.close()
        if stop.requested:
            return 128 + signal.SIGTERM  # stopped before the step started
        _run_cold(argv, no_answer or f"warm server refused: {reply.get('refused', reply)}",
                  what)
    if not passed:  # a Ray job's log says where its step ran; a run process's output is its own
        print(f"unified-ai: {what} runs in process {reply['pid']}, forked from warm server "
              f"{reply['server']} (libraries preloaded)", file=sys.stderr, flush=True)
    stop.sock = sock
    stop.forward()
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
    """Wait for the step's exit code. A stop signal (Ray stopping the job) has asked the
    server to SIGTERM the step, as Ray would have signalled it (and to SIGKILL it after
    `GRACE_S`, or at once when this client dies). This process's parent going away (the
    job's node lost) ends the client, and so the step, at once, as Ray's `kill -9` would.
    A server gone mid-step (it kills its steps when it dies) reads as a kill: 137."""
    parent = os.getppid()

    def watch_parent() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(KILLED)

    threading.Thread(target=watch_parent, daemon=True).start()
    try:
        reply, _ = recv_message(sock)
    except (OSError, ConnectionError, ValueError):
        print("unified-ai: the warm server went away before the step ended", file=sys.stderr,
              flush=True)
        return KILLED
    code = int(reply.get("exit", 1))
    return code if code >= 0 else 128 - code  # killed by signal N: 128 + N, as a shell says


# --- the server.

@dataclass
class _Child:
    """A running step. `conn` is watched until its client closes it; `kill_at`: when to
    SIGKILL the step's group (set by a stop request, or at once when the client is gone)."""
    conn: socket.socket
    kill_at: float | None = None
    client_gone: bool = False


def _file_identity(info: os.stat_result) -> tuple[int, ...]:
    # ctime and inode too: a file replaced by one of the same size and mtime still differs.
    return (info.st_ino, info.st_mtime_ns, info.st_ctime_ns, info.st_size)


@dataclass
class _Server:
    key: str
    folder: Path
    lock: IO[str]  # flock held while this server may serve its key
    listener: socket.socket | None = None
    socket_inode: int = 0  # of our socket's file: unlink it only while it is still ours
    files: dict[str, tuple[int, ...]] = field(default_factory=dict)
    children: dict[int, _Child] = field(default_factory=dict)
    idle_s: float = DEFAULT_IDLE_S
    last_active: float = field(default_factory=time.monotonic)
    stale: str | None = None  # why no new step is served any more
    # Still to import, one at a time while no request waits (a step needing them all waits
    # for "<key>.sock"); what failed to import, and when the preload started, for its log.
    pending: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    preload_started: float = 0.0
    preload_count: int = 0
    unsafe: str | None = None  # why forking this server is unsafe: every request refused
    cluster_misses: int = 0

    def changed_file(self) -> str | None:
        for path, seen in self.files.items():
            try:
                if _file_identity(os.stat(path)) != seen:
                    return path
            except OSError:
                return path
        return None


def _loaded_files() -> dict[str, tuple[int, ...]]:
    out = {}
    for module in list(sys.modules.values()):
        path = getattr(module, "__file__", None)
        if path:
            with contextlib.suppress(OSError):
                out[path] = _file_identity(os.stat(path))
    return out


def _preload(modules: Sequence[str]) -> list[str]:
    """Import each module; an entry `module:function` also calls that function of it (a
    library's own warm-up, such as MLflow's map of installed distributions). What fails is
    returned and left for the step to do."""
    import importlib

    failed = []
    for entry in modules:
        name, _, call = entry.partition(":")
        try:
            module = importlib.import_module(name)
            if call:
                getattr(module, call)()
        except ModuleNotFoundError as error:
            if error.name != name:  # not the module itself: something it needs is broken
                failed.append(f"{name} ({type(error).__name__}: {error})")
        except Exception as error:  # as multiprocessing's forkserver: the step imports it
            failed.append(f"{name} ({type(error).__name__}: {error})")
    return failed


def cluster_address(address: str) -> tuple[str, int] | None:
    """(host, port) of RAY_ADDRESS as Ray gives a job ("host:port", "[v6]:port", with or
    without a scheme), or None when it names no reachable endpoint ("auto", "", local)."""
    rest = address.strip().split("://", 1)[-1]
    host, sep, port = rest.rpartition(":")
    if not sep or not port.isdigit() or not host:
        return None
    return host.strip("[]"), int(port)


def _cluster_alive() -> bool:
    """The Ray cluster (RAY_ADDRESS, the GCS address Ray gives a job) still accepts a
    connection; True when there is no address to check."""
    target = cluster_address(os.environ.get("RAY_ADDRESS", ""))
    if target is None:
        return True
    try:
        with socket.create_connection(target, timeout=3):
            return True
    except OSError:
        return False


def _owner_alive() -> bool:
    """True unless OWNER_ENV names a pid that no longer runs."""
    owner = os.environ.get(OWNER_ENV, "").strip()
    if not owner.isdigit():
        return True
    try:
        os.kill(int(owner), 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, another user's: not ours to judge
        return True
    return True


def _detach() -> None:
    """Fork; the parent (the process the client started, a child of the client's Ray job)
    exits at once and the server carries on in the child, a child of nobody's job: Ray's
    stop of a job kills its entrypoint and the entrypoint's descendants."""
    if os.fork():
        os._exit(0)


def server_main(key: str) -> int:
    folder = socket_dir()
    _detach()
    lock = open(folder / f"{key}.lock", "a")  # noqa: SIM115 - held for the server's life
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return 0  # another server for this key is starting or serving
    # Run as a script, sys.path[0] is this file's folder: not on a step's path, so not here.
    if sys.path and os.path.abspath(sys.path[0] or ".") == os.path.dirname(
            os.path.abspath(__file__)):
        del sys.path[0]
    extra = [m for m in filter(None, os.environ.get(PRELOAD_ENV, "").split(","))
             if m not in BASE_PRELOAD]
    server = _Server(key=key, folder=folder, lock=lock, pending=extra,
                     preload_started=time.monotonic(), preload_count=len(BASE_PRELOAD) + len(extra),
                     idle_s=float(os.environ.get(IDLE_ENV, DEFAULT_IDLE_S)))
    server.failed = _preload(BASE_PRELOAD)
    _check_preloaded(server)
    server.files = _loaded_files()
    path, tmp = folder / f"{key}.sock", folder / f"{key}.{os.getpid()}.tmp"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(tmp))
    os.chmod(tmp, 0o600)
    listener.listen(16)
    server.socket_inode = os.stat(tmp).st_ino
    server.listener = listener
    # Run processes are served from here on (the name is a second link to the same socket);
    # steps and forkservers, which want every library, see "<key>.sock" once all are in.
    link = folder / f"{key}.{os.getpid()}.ln"
    os.link(tmp, link)
    os.replace(link, folder / f"{key}{EARLY_SUFFIX}")
    print(f"warm server {os.getpid()} for {key}: serving run processes after "
          f"{len(BASE_PRELOAD)} modules in {time.monotonic() - server.preload_started:.1f} s; "
          f"{len(server.pending)} more to preload", flush=True)
    with contextlib.suppress(OSError):
        (folder / f"{key}.spawned").unlink()  # started: no back-off for the next one
    if not server.pending:
        _preloaded(server)
    try:
        _serve(server)
    finally:
        _stop_listening(server, path)
        for pid in server.children:  # nobody is left to report their exit to
            with contextlib.suppress(OSError):
                os.killpg(pid, signal.SIGKILL)
    return 0


def _check_preloaded(server: _Server) -> None:
    """After each import: whether forking is still safe. A library that started a thread
    ends the preload; every request is refused from then on (`_refusal`)."""
    threads = [t.name for t in threading.enumerate() if t is not threading.main_thread()]
    if threads and not server.unsafe:  # a fork copies only the forking thread; locks the
        # others held stay held
        server.unsafe = f"a preloaded library started threads {threads}; forking is unsafe"
        server.pending.clear()


def _preload_next(server: _Server) -> None:
    """Import one more module (the server does this only while no request waits), and once
    the last is in, give the socket its full name."""
    server.failed += _preload(server.pending[:1])
    del server.pending[:1]
    server.last_active = time.monotonic()  # idle counts from the end of the preload
    _check_preloaded(server)
    if not server.pending:
        _preloaded(server)


def _preloaded(server: _Server) -> None:
    """The preload is over: the files to watch for changes from now on (a fork between two
    imports got modules just read from disk), the log line, the socket's full name."""
    server.files = _loaded_files()
    failed, unsafe = server.failed, server.unsafe
    print(f"warm server {os.getpid()} for {server.key}: preloaded {server.preload_count} "
          f"modules in {time.monotonic() - server.preload_started:.1f} s"
          + (f"; skipped {failed}" if failed else "")
          + (f"; {unsafe}: refusing every step" if unsafe else ""), flush=True)
    if server.listener is not None:
        os.replace(server.folder / f"{server.key}.{os.getpid()}.tmp",
                   server.folder / f"{server.key}.sock")


def _stop_listening(server: _Server, path: Path) -> None:
    if server.listener is not None:
        server.pending.clear()
        for name in (path, path.with_suffix(EARLY_SUFFIX),
                     path.with_name(f"{server.key}.{os.getpid()}.tmp")):
            with contextlib.suppress(OSError):
                if os.stat(name).st_ino == server.socket_inode:
                    name.unlink()
        server.listener.close()
        server.listener = None


def _serve(server: _Server) -> None:
    next_cluster_check = time.monotonic() + CLUSTER_CHECK_S
    path = server.folder / f"{server.key}.sock"
    while True:
        # A client already gone stays readable (EOF): not watched again, or this would spin.
        watched = [c.conn for c in server.children.values() if not c.client_gone]
        if server.listener is not None:
            watched.append(server.listener)
        # With modules left to import: look, serve what waits, else import the next one.
        readable, _, _ = select.select(watched, [], [], 0 if server.pending else 0.5)
        for sock in readable:
            try:
                if sock is server.listener:
                    _accept(server)
                else:
                    _client_spoke(server, sock)
            except Exception:  # one bad connection must not end the server and its steps
                import traceback

                traceback.print_exc()
        if server.pending and not readable and server.listener is not None:
            _preload_next(server)
        _reap(server)
        now = time.monotonic()
        for pid, child in server.children.items():
            if child.kill_at is not None and now >= child.kill_at:
                with contextlib.suppress(OSError):
                    os.killpg(pid, signal.SIGKILL)
        if now >= next_cluster_check:
            next_cluster_check = now + CLUSTER_CHECK_S
            server.cluster_misses = 0 if _cluster_alive() else server.cluster_misses + 1
            if server.cluster_misses >= CLUSTER_MISSES and not server.stale:
                # Its running steps end with their jobs (their clients die with the cluster).
                server.stale = "the Ray cluster stopped answering"
            if not server.stale and not _owner_alive():
                server.stale = f"the process that owns it ({os.environ[OWNER_ENV]}) exited"
        if server.stale and server.listener is not None:
            print(f"warm server {os.getpid()}: {server.stale}; not serving again", flush=True)
            _stop_listening(server, path)
            fcntl.flock(server.lock, fcntl.LOCK_UN)  # a new server may start at once
        if not server.children and (server.listener is None
                                    or now - server.last_active > server.idle_s):
            why = server.stale or f"idle for {server.idle_s:.0f} s"
            print(f"warm server {os.getpid()}: exiting ({why})", flush=True)
            return


def _accept(server: _Server) -> None:
    assert server.listener is not None
    conn, _ = server.listener.accept()
    server.last_active = time.monotonic()
    fds: list[int] = []
    try:
        creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        _, peer_uid, _ = struct.unpack("3i", creds)
        if peer_uid != os.getuid():  # the folder is 0700 already; a second lock on the door
            raise WarmUnavailable(f"a connection from uid {peer_uid}")
        request, fds = recv_message(conn, max_fds=3 + MAX_PASSED_FDS,
                                    deadline=time.monotonic() + ACCEPT_DEADLINE_S)
        conn.settimeout(None)
        refused = _refusal(server, request, fds)
        if refused:
            send_message(conn, {"refused": refused})
            raise WarmUnavailable(refused)
    except (OSError, ConnectionError, ValueError, WarmUnavailable):
        conn.close()
        for fd in fds:
            os.close(fd)
        return
    try:
        sys.stdout.flush()
        sys.stderr.flush()
        # Everything preloaded so far goes to the collector's permanent generation, as
        # CPython's documentation advises before fork(): a child's full collection then walks
        # only what the child allocated and writes nothing into the preload's pages, which
        # stay shared. A child forked from this server's training preload (695,000 objects),
        # collecting once: 0.42-0.45 s and 176 MB of the preload made private, against under
        # 1 ms and nothing (bench/fork_gc.py). Frozen objects are never freed: here they are
        # the preload, which this server keeps for its life anyway.
        gc.freeze()
        pid = os.fork()
        if pid == 0:
            _child(server, request, fds, conn)
        with contextlib.suppress(OSError):  # as the child does: no window without a group
            os.setpgid(pid, pid)
    finally:
        for fd in fds:
            os.close(fd)
    child = server.children[pid] = _Child(conn)
    try:
        send_message(conn, {"pid": pid, "server": os.getpid()})
    except OSError:  # the client is gone already: so is its job; kept until reaped
        _kill_now(pid, child)


def _refusal(server: _Server, request: dict, fds: list[int]) -> str | None:
    argv = request.get("argv") or []
    named = multiprocessing_command(argv)
    passed = request.get("fds") or []
    if request.get("key") != server.key or not is_servable(argv) \
            or not set(named[1] if named else ()) <= set(passed) or (passed and not named) \
            or len(fds) != 3 + len(passed) or len(set(passed)) != len(passed) \
            or not all(isinstance(fd, int) and fd > 2 for fd in passed):
        return "malformed request"
    if server_key(argv, request.get("env") or {}, request.get("cwd") or "") != server.key:
        return "another Python, folder or environment than this server's"
    if named and _split_flags(argv)[0] != _own_flags():
        return "other interpreter flags than this server's"
    if server.unsafe:
        return server.unsafe
    changed = server.changed_file()
    if changed:
        server.stale = f"{changed} changed since it was preloaded"
        return server.stale
    return None


def _own_flags() -> list[str]:
    from multiprocessing.util import _args_from_interpreter_flags

    return list(_args_from_interpreter_flags())


def _take_fds(received: Sequence[int], targets: Sequence[int]) -> None:
    """Put each received fd on its number in the client (stdio, then every fd the client was
    started with). Moved above every target first: one may have arrived on another's number."""
    high = max(targets) + 1
    moved = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, high) for fd in received]
    for fd in received:
        os.close(fd)
    for target, fd in zip(targets, moved, strict=True):
        os.dup2(fd, target)  # inheritable, as they were in the client
        os.close(fd)


def _child(server: _Server, request: dict, fds: list[int], conn: socket.socket) -> NoReturn:
    """In the forked process: the client's fds, folder and environment, then Dagster's
    `api execute_step` (or multiprocessing's entry point), and exit with its code after the
    interpreter's own shutdown steps.
    Never returns."""
    import atexit

    code = 1
    try:
        os.setpgid(0, 0)  # the server ends the step's whole group when its client goes away
        atexit._clear()  # the server's exit handlers are not the step's to run
        signal.signal(signal.SIGINT, signal.default_int_handler)
        for signum in (signal.SIGTERM, signal.SIGHUP, signal.SIGCHLD):
            signal.signal(signum, signal.SIG_DFL)
        if server.listener is not None:
            server.listener.close()
        for child in server.children.values():
            child.conn.close()
        conn.close()
        server.lock.close()  # the server's lock is not held by its steps
        _take_fds(fds, [0, 1, 2, *request["fds"]])  # no other copy leaks into the step
        _raise_oom_score()
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        os.environ[SERVER_ENV] = str(os.getppid())
        argv = request["argv"]
        named = multiprocessing_command(argv)
        if not os.environ.get("PYTHONSAFEPATH"):
            # as `python -m dagster` (the folder) or `python -c` ("") has it
            sys.path.insert(0, "" if named else request["cwd"])
        _reseed()
        _exit_with_server(os.getppid())
        try:
            _run_command(argv, named)
            code = 0
        except SystemExit as done:
            code = _exit_code(done)
    except BaseException:
        import traceback

        traceback.print_exc()
    _shutdown()
    os._exit(code)


def _run_command(argv: Sequence[str], named: tuple[str, tuple[int, ...]] | None) -> None:
    """What the fresh interpreter would have run: Dagster's CLI for a step, or the
    multiprocessing entry point it names, with the arguments read as literals (never run
    as code)."""
    if named is None:
        from dagster._cli import main as dagster_main

        sys.argv = ["dagster", *argv[3:]]
        dagster_main()
    elif named[0] == "spawn":
        from multiprocessing.spawn import spawn_main

        sys.argv = ["-c", "--multiprocessing-fork"]
        tracker_fd, pipe_handle = named[1]
        spawn_main(tracker_fd=tracker_fd, pipe_handle=pipe_handle)
    else:
        import ast
        from multiprocessing.forkserver import main as forkserver_main

        found = _FORKSERVER.match(_split_flags(argv)[1][1])
        assert found is not None
        sys.argv = ["-c"]
        forkserver_main(int(found[1]), int(found[2]), ast.literal_eval(found[3]),
                        **ast.literal_eval(found[4]))


def _exit_code(done: SystemExit) -> int:
    """As the interpreter reads a SystemExit: None is 0, an int itself, anything else is
    printed to stderr and exits 1."""
    if done.code is None:
        return 0
    if isinstance(done.code, int):
        return done.code
    print(done.code, file=sys.stderr)
    return 1


def _shutdown() -> None:
    """What the interpreter does on exit, for the step's part: wait for its non-daemon
    threads, run the exit handlers it registered, flush logging and stdio."""
    import atexit
    import logging

    for step in (threading._shutdown, atexit._run_exitfuncs, logging.shutdown,  # type: ignore[attr-defined]
                 sys.stdout.flush, sys.stderr.flush):
        with contextlib.suppress(BaseException):
            step()


def _raise_oom_score() -> None:
    """Under memory pressure the kernel should kill a step, not the server all steps share."""
    with contextlib.suppress(OSError, ValueError), \
            open("/proc/self/oom_score_adj", "r+") as score:
        current = int(score.read().strip() or 0)
        score.seek(0)
        score.write(str(min(1000, current + 200)))


def _reseed() -> None:
    """Every fork copies the server's random state; a fresh interpreter seeds its own.
    (Python's `random` reseeds after fork by itself.)"""
    numpy_random = sys.modules.get("numpy.random")
    if numpy_random is not None:
        with contextlib.suppress(Exception):
            numpy_random.seed()


def _exit_with_server(server_pid: int) -> None:
    """A step whose server is gone has nobody to report to: it ends too."""
    def watch() -> None:
        while os.getppid() == server_pid:
            time.sleep(1.0)
        os._exit(KILLED)

    threading.Thread(target=watch, name="warm-server-watch", daemon=True).start()


def _kill_now(pid: int, child: _Child) -> None:
    child.client_gone = True
    child.kill_at = time.monotonic()
    with contextlib.suppress(OSError):
        os.killpg(pid, signal.SIGKILL)


def _client_spoke(server: _Server, conn: socket.socket) -> None:
    """The client asked to stop the step (`TERMINATE`: SIGTERM, then SIGKILL after GRACE_S or
    as soon as the client is gone, as Ray's supervisor kills it after the same wait), or
    vanished (killed with its job, or its node lost): SIGKILL at once, as Ray kills a job's
    processes, so the step writes nothing more (a lost node's step is retried elsewhere)."""
    for pid, child in server.children.items():
        if child.conn is conn:
            try:
                data = conn.recv(16)
            except OSError:
                data = b""
            if not data:
                _kill_now(pid, child)
            elif TERMINATE in data and child.kill_at is None:
                with contextlib.suppress(OSError):
                    os.killpg(pid, signal.SIGTERM)
                child.kill_at = time.monotonic() + GRACE_S
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
        # What the step started in its group ends with it, as when Ray ends a job.
        with contextlib.suppress(OSError):
            os.killpg(pid, signal.SIGKILL)
        server.last_active = time.monotonic()
        with contextlib.suppress(OSError):
            send_message(child.conn, {"exit": os.waitstatus_to_exitcode(status)})
        child.conn.close()


def main(argv: Sequence[str]) -> int:
    if len(argv) == 2 and argv[0] == "--serve":
        return server_main(argv[1])
    if len(argv) >= 2 and argv[0] == "--python":
        return python_main(argv[1:])
    if not argv:
        print("usage: ray_warm.py <python> -m dagster api execute_step | --python <python> "
              "ARGS... | --serve KEY", file=sys.stderr)
        return 2
    return client_main(argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
