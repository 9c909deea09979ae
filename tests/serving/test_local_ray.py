"""The local Ray instance `serving` starts on demand when no RAY_ADDRESS is set
(`deploy.ensure_local_ray`): one per home, its processes in the product's Serve mode
(`SERVE_NODE_ENV`), and `stop_local_ray` stops exactly it."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from unified_assets.serving.deploy import (
    SERVE_NODE_ENV,
    ensure_local_ray,
    serve_details,
    stop_local_ray,
)

pytestmark = pytest.mark.slow


def _group(pgid: int) -> list[int]:
    """Live processes in process group `pgid` (zombies run nothing)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) == pgid and fields[0] != "Z":
                found.append(int(entry.name))
    return found


def _binary(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode().rsplit("/", 1)[-1]
    except OSError:
        return ""


def _environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().decode(errors="replace")
    return dict(item.split("=", 1) for item in raw.split("\0") if "=" in item)


def test_local_ray_starts_once_per_home_in_the_products_serve_mode_and_stops_alone(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    for name in SERVE_NODE_ENV:
        monkeypatch.delenv(name, raising=False)
    home = tmp_path / "home"
    dashboard = ensure_local_ray(home, num_cpus=1)
    pgid = json.loads((home / "serving" / "ray.json").read_text())["pgid"]
    try:
        assert ensure_local_ray(home) == dashboard  # the running instance, not a second one
        assert isinstance(serve_details(dashboard), dict)  # Serve's REST API answers
        # The raylet starts every worker (Serve's controller, proxy and replicas) in its own
        # environment. (Processes that retitle themselves, ray::..., overwrite theirs in
        # /proc, so the two daemons are read.)
        daemons = {_binary(pid): pid for pid in _group(pgid)}
        for name in ("raylet", "gcs_server"):
            env = _environ(daemons[name])
            assert {k: env.get(k) for k in SERVE_NODE_ENV} == SERVE_NODE_ENV, name
    finally:
        assert stop_local_ray(home)
    deadline = time.monotonic() + 30
    while _group(pgid) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert _group(pgid) == []
    assert not (home / "serving" / "ray.json").exists()
    assert stop_local_ray(home) is False  # nothing left to stop
