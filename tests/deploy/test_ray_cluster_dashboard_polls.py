"""`scripts/ray_cluster.sh gpu-up` against a dashboard that drops connections. Found in CI on
a loaded machine: Ray's dashboard closed one poll's connection without an answer
(`RemoteDisconnected`) and `gpu-up` failed although the node joined; `up` already retried.
Every poll of the dashboard now retries until its deadline (RAY_NODE_WAIT_S)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from tests.browser.conftest import ROOT

HEAD = {"node_id": "head", "state": "ALIVE"}


class FlakyDashboard(BaseHTTPRequestHandler):
    """`/api/v0/nodes`: every other request is dropped without an answer; the node list
    gains a live GPU node once `gpu.pid` exists (the script started one)."""

    calls: list[str] = []
    run: Path

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        self.calls.append(self.path)
        if len(self.calls) % 2 == 0:
            self.connection.shutdown(socket.SHUT_RDWR)  # closed with no status line
            return
        nodes = [HEAD] + ([{"node_id": "gpu-new", "state": "ALIVE"}]
                          if (self.run / "gpu.pid").exists() else [])
        body = json.dumps({"data": {"result": {"result": nodes}}}).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        return None


def test_gpu_up_waits_through_dropped_dashboard_connections(tmp_path: Path):
    run = tmp_path / "ray" / "unified-ai"
    run.mkdir(parents=True)
    head = subprocess.Popen(["sleep", "300"])  # stands for the head node's `ray start`
    (run / "head.pid").write_text(str(head.pid))
    FlakyDashboard.calls, FlakyDashboard.run = [], run
    server = ThreadingHTTPServer(("127.0.0.1", 0), FlakyDashboard)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    with socket.socket() as probe:  # a GCS port nothing listens on: the GPU node never joins
        probe.bind(("127.0.0.1", 0))
        gcs_port = probe.getsockname()[1]
    env = os.environ | {"RAY_TEMP_DIR": str(tmp_path / "ray"), "RAY_NODE_WAIT_S": "60",
                        "RAY_DASHBOARD_PORT": str(server.server_address[1]),
                        "RAY_GCS_PORT": str(gcs_port)}
    try:
        done = subprocess.run(["bash", "scripts/ray_cluster.sh", "gpu-up"], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stdout + done.stderr
        assert "GPU node up again" in done.stdout
        assert len(FlakyDashboard.calls) >= 3  # the listing before, a dropped poll, the answer
    finally:
        server.shutdown()
        head.kill()
        with contextlib.suppress(OSError, ValueError):
            os.killpg(int((run / "gpu.pid").read_text()), signal.SIGKILL)
