"""The warm step path of Ray jobs (placement/ray_warm.py), without Ray: a real server process,
real clients, Dagster's real `api execute_step` in the forked step. What the step sees and
where it ran on a real Ray cluster is asserted in tests/ray."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from unified_assets.placement import ray_warm

STEP = [sys.executable, "-m", "dagster", "api", "execute_step"]
WARM = str(Path(ray_warm.__file__).resolve())


# Preloaded by the test servers: wraps Dagster's `api execute_step` so that a step forked
# from the server does what UNIFIED_AI_TEST_PROBE says (a per-step setting, not in the key).
PROBE = """
import atexit, json, os, signal, subprocess, sys, time
import dagster._cli.api as api

LOADED = True
_original = api.execute_step_command.callback


def _probe(*args, **kwargs):
    action = os.environ.get("UNIFIED_AI_TEST_PROBE", "")
    if not action:
        return _original(*args, **kwargs)
    out = os.environ["UNIFIED_AI_TEST_PROBE_OUT"]
    if action == "signal":
        os.kill(os.getpid(), signal.SIGUSR1)
    if action == "exit-message":
        raise SystemExit("the probe says no")
    if action == "report":
        import numpy
        fds = {}
        for name in os.listdir("/proc/self/fd"):
            try:
                fds[name] = os.readlink(f"/proc/self/fd/{name}")
            except OSError:
                pass
        with open("/proc/self/oom_score_adj") as score:
            oom = int(score.read())
        atexit.register(lambda: open(out + ".atexit", "w").write("ran"))
        with open(out, "w") as f:
            json.dump({"path0": sys.path[0], "cwd": os.getcwd(), "fds": fds, "oom": oom,
                       "sigint_default": signal.getsignal(signal.SIGINT)
                       is signal.default_int_handler,
                       "draw": int(numpy.random.randint(0, 2**31))}, f)
        return
    grandchild = subprocess.Popen(["sleep", "600"])
    if action == "ignore-term":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    with open(out, "w") as f:
        json.dump({"pid": os.getpid(), "grandchild": grandchild.pid}, f)
    time.sleep(600)


api.execute_step_command.callback = _probe
"""


@pytest.fixture
def sockets() -> Iterator[Path]:
    """A short folder for the sockets (a socket path is limited to 107 bytes), not created:
    the client creates it 0700. Its servers are ended afterwards."""
    parent = Path(tempfile.mkdtemp(prefix="uaiw-", dir="/tmp"))
    yield parent / "s"
    for log in (parent / "s").glob("*.log"):
        for pid in re.findall(r"warm server (\d+) for", log.read_text()):
            with contextlib.suppress(OSError):
                os.kill(int(pid), signal.SIGKILL)
    shutil.rmtree(parent, ignore_errors=True)


def _env(tmp_path: Path, sockets: Path, **extra: str) -> dict[str, str]:
    lib = tmp_path / "lib"
    lib.mkdir(exist_ok=True)
    (lib / "uai_warm_probe.py").write_text(PROBE)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST")}
    env.update({ray_warm.DIR_ENV: str(sockets), "PYTHONPATH": str(lib), "RAY_ADDRESS": "",
                ray_warm.PRELOAD_ENV: "uai_warm_probe", ray_warm.IDLE_ENV: "30", **extra})
    return env


def _client(env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, WARM, *STEP], env=env, cwd=cwd, capture_output=True,
                          text=True, timeout=120)


def _wait_for(predicate, what: str, patience_s: float = 90) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + patience_s
    while not predicate():
        assert time.monotonic() < deadline, f"never: {what}"
        time.sleep(0.2)


def _socket(env: dict[str, str], cwd: Path) -> Path:
    key = ray_warm.server_key(STEP, env, str(cwd))
    return Path(env[ray_warm.DIR_ENV]) / f"{key}.sock"


def _alive(pid: int) -> bool:
    """Running (a zombie waiting for its parent to reap it has ended)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _ppid(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def _warm_server(tmp_path: Path, sockets: Path) -> tuple[dict[str, str], int]:
    """A listening server for this test's environment, and its pid."""
    env = _env(tmp_path, sockets)
    _client(env, tmp_path)
    sock = _socket(env, tmp_path)
    _wait_for(sock.exists, "the warm server listens")
    pid = re.findall(r"warm server (\d+) for", sock.with_suffix(".log").read_text())[-1]
    return env, int(pid)


def _start_probe(env: dict[str, str], cwd: Path, action: str,
                 out: Path) -> tuple[subprocess.Popen[str], dict]:
    """A client whose warm step does `action` (PROBE); the step's pids once it runs."""
    client = subprocess.Popen(
        [sys.executable, WARM, *STEP], cwd=cwd, text=True, stderr=subprocess.PIPE,
        env={**env, "UNIFIED_AI_TEST_PROBE": action, "UNIFIED_AI_TEST_PROBE_OUT": str(out)})
    _wait_for(lambda: out.exists() and out.read_text().endswith("}"), "the step runs")
    return client, json.loads(out.read_text())


def test_the_key_ignores_per_step_settings_but_not_what_libraries_read() -> None:
    base = {"PATH": "/usr/bin", "OMP_NUM_THREADS": "1"}
    key = ray_warm.server_key(STEP, base, "/w")
    per_step = {**base, "CUDA_VISIBLE_DEVICES": "0", "UNIFIED_AI_HOME": "/h2",
                "DAGSTER_COMPRESSED_EXECUTE_STEP_ARGS": "x", "RAY_JOB_CONFIG_JSON_ENV_VAR": "{}"}
    assert ray_warm.server_key(STEP, per_step, "/w") == key
    assert ray_warm.server_key(STEP, {**base, "OMP_NUM_THREADS": "4"}, "/w") != key
    assert ray_warm.server_key(STEP, {**base, "PYTHONPATH": "/x"}, "/w") != key
    assert ray_warm.server_key(STEP, base, "/elsewhere") != key
    assert ray_warm.server_key(["/other/python", *STEP[1:]], base, "/w") != key


def test_only_a_dagster_step_command_is_ever_served() -> None:
    assert ray_warm.is_dagster_step(STEP)
    assert not ray_warm.is_dagster_step([sys.executable, "-c", "print(1)"])
    assert not ray_warm.is_dagster_step([sys.executable, "-m", "dagster", "api", "execute_run"])


def test_a_socket_folder_others_can_open_is_refused(sockets: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    folder = sockets  # short: under pytest-xdist, tmp_path is too long for a socket path
    monkeypatch.setenv(ray_warm.DIR_ENV, str(folder))
    folder.mkdir(mode=0o755)
    folder.chmod(0o755)
    with pytest.raises(ray_warm.WarmUnavailable, match="only this user"):
        ray_warm.socket_dir()
    folder.chmod(0o700)
    assert ray_warm.socket_dir() == folder
    folder.rmdir()
    folder.symlink_to(folder.parent, target_is_directory=True)  # a link to a folder is not one
    with pytest.raises(ray_warm.WarmUnavailable):
        ray_warm.socket_dir()


def test_first_step_starts_a_server_then_steps_fork_from_it_with_their_own_stdio_and_exit_code(
        tmp_path: Path, sockets: Path) -> None:
    env = _env(tmp_path, sockets)
    first = _client(env, tmp_path)
    # No args for `api execute_step`: Dagster's own error, in this client's stderr, exit 1.
    assert "fresh interpreter (no warm server yet" in first.stderr
    assert "Must provide one of input_json or compressed_input_json" in first.stderr
    assert first.returncode == 1
    sock = _socket(env, tmp_path)
    _wait_for(sock.exists, "the warm server listens")

    second = _client(env, tmp_path)
    assert "forked from warm server" in second.stderr, second.stderr
    assert "Must provide one of input_json or compressed_input_json" in second.stderr
    assert second.returncode == 1
    log = sock.with_suffix(".log").read_text()
    assert f"preloaded {len(ray_warm.BASE_PRELOAD) + 1} modules" in log  # Dagster's + the probe
    assert "skipped" not in log

    # Another run's settings (home, step args) use the same server.
    third = _client({**env, "UNIFIED_AI_HOME": str(tmp_path / "other")}, tmp_path)
    assert "forked from warm server" in third.stderr


def test_a_changed_library_file_makes_the_server_refuse_and_step_aside(
        tmp_path: Path, sockets: Path) -> None:
    env = _env(tmp_path, sockets)
    _client(env, tmp_path)
    sock = _socket(env, tmp_path)
    _wait_for(sock.exists, "the warm server listens")
    probe = tmp_path / "lib" / "uai_warm_probe.py"
    probe.write_text("LOADED = 'changed'\n")
    os.utime(probe, ns=(time.time_ns(), time.time_ns() + 10**9))

    refused = _client(env, tmp_path)
    assert "warm server refused" in refused.stderr and "uai_warm_probe.py changed" in refused.stderr
    assert refused.returncode == 1  # ran cold instead: Dagster's own error again
    _wait_for(lambda: not sock.exists(), "the stale server stops listening", 30)
    # The next step starts a fresh server, which preloads the changed file.
    _client(env, tmp_path)
    _wait_for(sock.exists, "a new warm server listens")
    assert "forked from warm server" in _client(env, tmp_path).stderr


def test_off_switch_runs_every_step_in_a_fresh_interpreter(tmp_path: Path,
                                                           sockets: Path) -> None:
    env = _env(tmp_path, sockets, **{ray_warm.SWITCH_ENV: "off"})
    for _ in range(2):
        result = _client(env, tmp_path)
        assert "warm server" not in result.stderr and result.returncode == 1
        # The job's log says which process ran the step, with the switch that chose it.
        assert "fresh interpreter (UNIFIED_AI_RAY_WARM=off)" in result.stderr
    assert not sockets.exists()


def test_the_server_is_detached_from_the_job_that_started_it(
        tmp_path: Path, sockets: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Ray stops a job by killing its entrypoint and every descendant: the server a job
    started must not be one, or stopping the first step's job ends every later warm step."""
    for name, value in _env(tmp_path, sockets).items():
        monkeypatch.setenv(name, value)
    folder = ray_warm.socket_dir()
    key = ray_warm.server_key(STEP, os.environ, os.getcwd())
    ray_warm.spawn_server(key, STEP, folder)
    sock = folder / f"{key}.sock"
    _wait_for(sock.exists, "the warm server listens")
    server = int(re.findall(r"warm server (\d+) for", sock.with_suffix(".log").read_text())[-1])
    assert _ppid(server) != os.getpid()
    assert not (folder / f"{key}.spawned").exists()  # it started: no back-off for the next


def test_an_idle_server_exits_and_its_log_says_why(tmp_path: Path, sockets: Path) -> None:
    """It holds ~0.6 GB: it goes once idle, leaving its log, and the next step starts anew."""
    env = {**_env(tmp_path, sockets), ray_warm.IDLE_ENV: "1"}
    _client(env, tmp_path)
    sock = _socket(env, tmp_path)
    _wait_for(sock.exists, "the warm server listens")
    pid = int(re.findall(r"warm server (\d+) for", sock.with_suffix(".log").read_text())[-1])
    _wait_for(lambda: not _alive(pid), "the idle server exits")
    assert f"warm server {pid}: exiting (idle for 1 s)" in sock.with_suffix(".log").read_text()
    assert "no warm server yet" in _client(env, tmp_path).stderr


def test_a_server_that_failed_to_start_is_not_started_again_at_once(
        tmp_path: Path, sockets: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ray_warm.DIR_ENV, str(sockets))
    folder = ray_warm.socket_dir()
    broken = ["/nonexistent/python", *STEP[1:]]
    with pytest.raises(FileNotFoundError):  # it tries once...
        ray_warm.spawn_server("k1", broken, folder)
    ray_warm.spawn_server("k1", broken, folder)  # ...and not again within the back-off
    (folder / "k1.spawned").touch()
    os.utime(folder / "k1.spawned", (0, time.time() - ray_warm.SPAWN_BACKOFF_S - 1))
    with pytest.raises(FileNotFoundError):
        ray_warm.spawn_server("k1", broken, folder)


def test_a_socket_folder_too_long_for_a_socket_path_is_refused_with_the_fix(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ray_warm.DIR_ENV, str(tmp_path / ("x" * 90)))
    with pytest.raises(ray_warm.WarmUnavailable, match=ray_warm.DIR_ENV):
        ray_warm.socket_dir()


def test_stopping_the_job_terminates_the_step_and_what_it_started(
        tmp_path: Path, sockets: Path) -> None:
    env, _ = _warm_server(tmp_path, sockets)
    client, step = _start_probe(env, tmp_path, "group", tmp_path / "step.json")
    client.send_signal(signal.SIGTERM)  # as Ray's job supervisor stops a job
    assert client.wait(timeout=30) == 128 + signal.SIGTERM, client.stderr.read()
    _wait_for(lambda: not _alive(step["pid"]) and not _alive(step["grandchild"]),
              "the step and its child end", 10)


def test_a_step_that_ignores_the_stop_is_killed_after_rays_grace(
        tmp_path: Path, sockets: Path) -> None:
    env, _ = _warm_server(tmp_path, sockets)
    client, step = _start_probe(env, tmp_path, "ignore-term", tmp_path / "step.json")
    client.send_signal(signal.SIGTERM)
    assert client.wait(timeout=30) == 128 + signal.SIGKILL  # after GRACE_S, as Ray would
    assert not _alive(step["pid"])


def test_a_vanished_client_kills_the_step_at_once_and_the_server_serves_on(
        tmp_path: Path, sockets: Path) -> None:
    env, _ = _warm_server(tmp_path, sockets)
    client, step = _start_probe(env, tmp_path, "ignore-term", tmp_path / "step.json")
    client.kill()  # the job's processes killed, or its node lost
    client.wait()
    # Sooner than a stop's grace would allow, were the kill treated as a stop.
    _wait_for(lambda: not _alive(step["pid"]) and not _alive(step["grandchild"]),
              "the step and its child are killed", ray_warm.GRACE_S)
    assert "forked from warm server" in _client(env, tmp_path).stderr


def test_a_server_dying_mid_step_reads_as_a_kill_and_ends_the_step(
        tmp_path: Path, sockets: Path) -> None:
    env, server = _warm_server(tmp_path, sockets)
    client, step = _start_probe(env, tmp_path, "sleep", tmp_path / "step.json")
    os.kill(server, signal.SIGKILL)
    assert client.wait(timeout=30) == 128 + signal.SIGKILL  # retryable, not a step failure
    _wait_for(lambda: not _alive(step["pid"]), "the orphaned step exits", 10)


def test_exit_codes_read_as_from_a_fresh_interpreter(tmp_path: Path, sockets: Path) -> None:
    env, _ = _warm_server(tmp_path, sockets)
    probe = {**env, "UNIFIED_AI_TEST_PROBE_OUT": str(tmp_path / "unused")}
    killed = _client({**probe, "UNIFIED_AI_TEST_PROBE": "signal"}, tmp_path)
    assert killed.returncode == 128 + signal.SIGUSR1
    refused = _client({**probe, "UNIFIED_AI_TEST_PROBE": "exit-message"}, tmp_path)
    assert refused.returncode == 1 and "the probe says no" in refused.stderr


def test_a_warm_step_process_looks_like_a_fresh_interpreter(tmp_path: Path,
                                                            sockets: Path) -> None:
    env, server = _warm_server(tmp_path, sockets)
    draws = []
    for n in range(2):
        out = tmp_path / f"report{n}.json"
        done = _client({**env, "UNIFIED_AI_TEST_PROBE": "report",
                        "UNIFIED_AI_TEST_PROBE_OUT": str(out)}, tmp_path)
        assert done.returncode == 0 and "forked from warm server" in done.stderr, done.stderr
        report = json.loads(out.read_text())
        draws.append(report["draw"])
        assert report["path0"] == str(tmp_path) == report["cwd"]  # as `python -m` has it
        assert report["sigint_default"]  # Ctrl-C raises KeyboardInterrupt
        server_oom = int(Path(f"/proc/{server}/oom_score_adj").read_text())
        assert report["oom"] > server_oom or report["oom"] == 1000  # killed before the server
        assert not [fd for fd, target in report["fds"].items()
                    if int(fd) > 2 and target.startswith("socket:")], report["fds"]
        assert (tmp_path / f"report{n}.json.atexit").read_text() == "ran"  # exit handlers ran
    assert draws[0] != draws[1]  # numpy reseeded per step, not the server's state copied


def test_a_client_that_leaves_before_the_reply_does_not_end_the_server(
        tmp_path: Path, sockets: Path) -> None:
    env, server = _warm_server(tmp_path, sockets)
    for _ in range(5):
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.connect(str(_socket(env, tmp_path)))
            ray_warm.send_message(sock, {"key": ray_warm.server_key(STEP, env, str(tmp_path)),
                                         "argv": STEP, "cwd": str(tmp_path), "env": env},
                                  fds=(0, 1, 2))
    assert _alive(server)
    assert "forked from warm server" in _client(env, tmp_path).stderr


def test_the_cluster_address_is_read_as_ray_gives_it() -> None:
    assert ray_warm.cluster_address("10.0.0.5:6379") == ("10.0.0.5", 6379)
    assert ray_warm.cluster_address("[::1]:6379") == ("::1", 6379)
    assert ray_warm.cluster_address("ray://head:10001") == ("head", 10001)
    assert ray_warm.cluster_address("auto") is None
    assert ray_warm.cluster_address("") is None


def test_a_request_already_received_is_read_even_when_the_server_was_slow_to_get_to_it() -> None:
    """Failed in the clean-clone CI under load: the server accepted a client, was not
    scheduled again until past its 3 s read deadline, and then dropped a request that had
    been waiting whole in its socket; the client ran cold saying "no warm server yet". The
    deadline is for a slow peer, not a slow server: only an empty socket times out."""
    server, client = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with server, client:
        ray_warm.send_message(client, {"key": "k"}, fds=(0,))
        message, fds = ray_warm.recv_message(server, max_fds=3, deadline=time.monotonic() - 5)
        for fd in fds:
            os.close(fd)
        assert message == {"key": "k"} and len(fds) == 1
        with pytest.raises(OSError):  # nothing sent, deadline passed: a slow peer
            ray_warm.recv_message(server, max_fds=3, deadline=time.monotonic() - 5)


def test_a_server_that_hangs_up_without_an_answer_is_not_called_missing(
        tmp_path: Path, sockets: Path) -> None:
    """The step runs cold either way; the job's log says which happened (the same CI failure
    read "no warm server yet" while a server was listening)."""
    import threading

    env = _env(tmp_path, sockets, **{ray_warm.SWITCH_ENV: "on"})
    sockets.mkdir(mode=0o700)
    path = _socket(env, tmp_path)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(1)

    def hang_up() -> None:
        conn, _ = listener.accept()
        conn.close()

    answering = threading.Thread(target=hang_up, daemon=True)
    answering.start()
    try:
        result = _client(env, tmp_path)
    finally:
        answering.join(timeout=10)
        listener.close()
    assert "fresh interpreter (the warm server did not answer (" in result.stderr, result.stderr
    assert "no warm server yet" not in result.stderr and result.returncode == 1
