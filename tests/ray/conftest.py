"""A real Ray cluster on this machine for the module: a CPU head node and a separate worker
node declaring one logical GPU and the `gpu` pool label (as scripts/ray_cluster.sh starts),
started with `ray.cluster_utils.Cluster` so a test can remove the GPU node and add it back.
Free ports, a short temp dir outside the venv, usage stats off; always shut down."""

import os
import shutil
import socket
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dagster as dg
import pytest

REPO = Path(__file__).resolve().parents[2]
# A killed node is declared dead after failure_threshold missed health checks (Ray's defaults:
# 5 x 3 s); faster here so a test does not sit out Ray's patience.
HEALTH_CHECK = {"health_check_period_ms": 1000, "health_check_failure_threshold": 3}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class RayTestCluster:
    cluster: Any
    address: str  # the dashboard URL jobs are submitted to
    gpu_node: Any = None
    removed: list[str] = field(default_factory=list)  # node ids of GPU nodes removed

    @property
    def gpu_node_id(self) -> str:
        return self.gpu_node.node_id

    def add_gpu_node(self) -> Any:
        self.gpu_node = self.cluster.add_node(
            num_cpus=2, num_gpus=1, labels={"unified-ai/pool": "gpu"},
            object_store_memory=80_000_000, dashboard_agent_listen_port=free_port())
        self.cluster.wait_for_nodes()
        return self.gpu_node

    def remove_gpu_node(self, wait_dead: bool = True) -> str:
        """Kill the GPU node's processes (as a machine loss would) and, by default, wait until
        Ray's GCS has declared it dead (health checks: `HEALTH_CHECK` below)."""
        node_id = self.gpu_node.node_id
        self.cluster.remove_node(self.gpu_node, allow_graceful=False)
        self.removed.append(node_id)
        self.gpu_node = None
        if wait_dead:
            self.wait_dead(node_id)
        return node_id

    def wait_dead(self, node_id: str, patience_s: float = 120) -> None:
        from unified_assets.placement.ray_capacity import fetch_ray_capacity

        deadline = time.monotonic() + patience_s
        while (node := fetch_ray_capacity(self.address).node(node_id)) is not None and node.alive:
            assert time.monotonic() < deadline, f"Ray never declared node {node_id[:8]} dead"
            time.sleep(0.5)

    def run_config(self, **extra: Any) -> dict[str, Any]:
        """The executor's config: the test steps' own variables by name (read from this
        process when each step is launched), as a user passes theirs."""
        from tests.ray.ray_defs import HOLD_ENV, POLICY_ENV

        return {"execution": {"config": {
            "address": self.address, "env_vars": [f"PYTHONPATH={REPO}", POLICY_ENV, HOLD_ENV],
            **extra}}}


def jobs_accepted(address: str, patience_s: float) -> str | None:
    """None once the cluster's job agents take a job (a no-op, run to its end), else why not.
    Found in CI: a cluster whose agents never came up (a port picked by `free_port` was taken
    by the other xdist worker's stack before an agent bound it) failed every test of the module
    with "No available agent to submit job"."""
    from ray.job_submission import JobStatus, JobSubmissionClient

    deadline, why = time.monotonic() + patience_s, "not tried"
    while time.monotonic() < deadline:
        try:
            client = JobSubmissionClient(address)
            job = client.submit_job(entrypoint="true")
            while time.monotonic() < deadline:
                status = client.get_job_status(job)
                if status == JobStatus.SUCCEEDED:
                    return None
                if status in (JobStatus.FAILED, JobStatus.STOPPED):
                    why = f"the no-op job ended {status}"
                    break
                time.sleep(0.5)
            else:
                why = "the no-op job did not end"
        except Exception as error:  # noqa: BLE001 - starting up: refused, "no available agent"
            why = f"{type(error).__name__}: {error}"
        time.sleep(2)
    return why


def _start_cluster(temp_dir: str) -> RayTestCluster:
    from ray.cluster_utils import Cluster

    dashboard_port = free_port()
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 4, "num_gpus": 0, "include_dashboard": True, "dashboard_host": "127.0.0.1",
        "dashboard_port": dashboard_port, "dashboard_agent_listen_port": free_port(),
        "object_store_memory": 100_000_000, "temp_dir": temp_dir, "_system_config": HEALTH_CHECK})
    test_cluster = RayTestCluster(cluster, f"http://127.0.0.1:{dashboard_port}")
    try:
        test_cluster.add_gpu_node()
    except BaseException:
        cluster.shutdown()
        raise
    return test_cluster


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[RayTestCluster]:
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    Path("/tmp/ray").mkdir(exist_ok=True)  # Cluster records its address there
    temp_dir = tempfile.mkdtemp(prefix="uai-ray-")  # short: Ray's socket paths are limited
    test_cluster = None
    try:
        # A cluster that takes no job in 90 s is started again once, on other ports.
        for attempt in (1, 2):
            test_cluster = _start_cluster(temp_dir)
            why = jobs_accepted(test_cluster.address, patience_s=90)
            if why is None:
                break
            test_cluster.cluster.shutdown()
            test_cluster = None
            if attempt == 2:
                pytest.fail(f"the test Ray cluster took no job twice: {why}")
        yield test_cluster
    finally:
        if test_cluster is not None:
            test_cluster.cluster.shutdown()
        shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.fixture(scope="module")
def ray_instance(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dg.DagsterInstance]:
    """A persistent (sqlite) instance: the steps run in other processes, as Ray jobs."""
    with dg.instance_for_test(temp_dir=str(tmp_path_factory.mktemp("ray-dagster"))) as instance:
        yield instance
