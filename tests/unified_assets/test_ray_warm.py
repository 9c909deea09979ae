"""The warm step path of Ray jobs (placement/ray_warm.py), without Ray: a real server process,
real clients, Dagster's real `api execute_step` in the forked step. What the step sees and
where it ran on a real Ray cluster is asserted in tests/ray."""

from __future__ import annotations

import os
import shutil
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


@pytest.fixture
def sockets() -> Iterator[Path]:
    """A short folder for the sockets (a socket path is limited to 107 bytes), not created:
    the client creates it 0700."""
    parent = Path(tempfile.mkdtemp(prefix="uaiw-", dir="/tmp"))
    yield parent / "s"
    shutil.rmtree(parent, ignore_errors=True)


def _env(tmp_path: Path, sockets: Path, **extra: str) -> dict[str, str]:
    lib = tmp_path / "lib"
    lib.mkdir(exist_ok=True)
    (lib / "uai_warm_probe.py").write_text("LOADED = True\n")
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


def test_a_socket_folder_others_can_open_is_refused(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "sockets"
    monkeypatch.setenv(ray_warm.DIR_ENV, str(folder))
    folder.mkdir(mode=0o755)
    folder.chmod(0o755)
    with pytest.raises(ray_warm.WarmUnavailable, match="only this user"):
        ray_warm.socket_dir()
    folder.chmod(0o700)
    assert ray_warm.socket_dir() == folder
    folder.rmdir()
    folder.symlink_to(tmp_path, target_is_directory=True)  # a link to a folder is not one
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
    assert not sockets.exists()
