"""`scripts/ray_cluster.sh` as the README runs it, on free ports and its own state folder:
up gives a CPU head and a GPU-pool worker; gpu-down kills the GPU node with everything on it;
gpu-up brings a new one; down stops this cluster and nothing else on the machine (a process
`ray stop` would have taken for Ray's is still running after it)."""

from __future__ import annotations

import os
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.ray.conftest import free_port
from unified_assets.placement.ray_capacity import fetch_ray_capacity

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "ray_cluster.sh"


def gone(pid: int, patience_s: float = 30) -> bool:
    """The process ended (a zombie counts: it runs nothing); a killed process may take a
    moment to be scheduled to die on a loaded machine."""
    deadline = time.monotonic() + patience_s
    while time.monotonic() < deadline:
        try:
            if "\nState:\tZ" in Path(f"/proc/{pid}/status").read_text():
                return True
        except OSError:
            return True
        time.sleep(0.2)
    return False


def processes_mentioning(text: str) -> list[int]:
    """Live processes whose command line names `text`."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if text in cmdline:
                found.append(int(entry.name))
    return found


@pytest.fixture
def script_env() -> Iterator[dict[str, str]]:
    temp_dir = tempfile.mkdtemp(prefix="uai-rcs-")  # short: Ray's socket paths are limited
    env = {**os.environ, "RAY_TEMP_DIR": temp_dir, "RAY_GCS_PORT": str(free_port()),
           "RAY_DASHBOARD_PORT": str(free_port()), "RAY_GPU_NODE_AGENT_PORT": str(free_port()),
           "RAY_CLIENT_PORT": str(free_port())}
    yield env
    subprocess.run(["bash", str(SCRIPT), "down"], env=env, capture_output=True, timeout=120)
    subprocess.run(["rm", "-rf", temp_dir], check=False)


def script(env: dict[str, str], command: str) -> str:
    done = subprocess.run(["bash", str(SCRIPT), command], env=env, capture_output=True,
                          text=True, timeout=700)
    assert done.returncode == 0, f"{command}: {done.stdout}{done.stderr}"
    return done.stdout


def test_up_gpu_down_gpu_up_down_touch_only_this_cluster(script_env: dict[str, str]) -> None:
    address = f"http://127.0.0.1:{script_env['RAY_DASHBOARD_PORT']}"
    out = script(script_env, "up")
    assert f"export UNIFIED_AI_DEPLOYMENT=ray RAY_ADDRESS={address}" in out
    pools = fetch_ray_capacity(address).pools()
    assert pools["gpu"]["gpus_total"] == 1 and pools["gpu"]["nodes"] == 1
    assert "already up" in script(script_env, "up")
    (gpu_node,) = fetch_ray_capacity(address).pool("gpu")
    # Something `ray stop --force` would kill: its command line names a Ray process.
    decoy = subprocess.Popen(["bash", "-c", 'exec -a "python log_monitor.py --not-ours" sleep 300'])
    try:
        run = Path(script_env["RAY_TEMP_DIR"]) / "unified-ai"
        gpu_pid = int((run / "gpu.pid").read_text())
        script(script_env, "gpu-down")
        assert gone(gpu_pid)
        script(script_env, "gpu-up")
        live = [n for n in fetch_ray_capacity(address).pool("gpu") if n.alive]
        assert any(n.node_id != gpu_node.node_id for n in live)  # a new node (the old may
        # count as alive until Ray's health checks end it)
        head_pid = int((run / "head.pid").read_text())
        # Found in a clean-clone CI under load: a Ray process of this cluster outside its
        # node's process group was still running when `down` returned. One such (a worker
        # in a session of its own), and a person's `tail` of the cluster's log, which is not
        # Ray and is left alone.
        temp = script_env["RAY_TEMP_DIR"]
        leftover = subprocess.Popen(
            ["bash", "-c", f'exec -a "python /venv/ray/_private/log_monitor.py '
                           f'--logs-dir={temp}/session_x/logs" sleep 300'], start_new_session=True)
        reader = subprocess.Popen(["bash", "-c", f'exec -a "tail -f {temp}/unified-ai/head.log" '
                                                 'sleep 300'], start_new_session=True)
        # A narrow COLUMNS (as a CI shell may have) cut `ps` lines before the temp dir.
        script({**script_env, "COLUMNS": "60"}, "down")
        assert gone(head_pid)
        assert leftover.wait(timeout=5) is not None
        assert processes_mentioning(temp) == [reader.pid]
        assert decoy.poll() is None, "down stopped a process that was not this cluster's"
    finally:
        for process in (decoy, *(p for p in (locals().get("leftover"), locals().get("reader"))
                                 if p is not None)):
            process.kill()
            process.wait()
