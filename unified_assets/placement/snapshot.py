"""Capacity snapshot: what the planner sees. Plain frozen dataclasses, no probing here
(see `probe` for the host and the Dagster instance, `kube` for Kubernetes nodes, `ray_capacity`
for a Ray cluster)."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True)
class CudaDevice:
    index: int
    name: str
    total_mb: int
    free_mb: int


@dataclass(frozen=True)
class HostCapacity:
    """The machine the probe ran on. `cuda_note` says why there are no CUDA devices."""

    hostname: str = "unknown"
    cpu_count: int = 1
    load_avg: tuple[float, float, float] = (0.0, 0.0, 0.0)
    cuda_devices: tuple[CudaDevice, ...] = ()
    cuda_note: str = ""

    @property
    def gpu_count(self) -> int:
        return len(self.cuda_devices)


@dataclass(frozen=True)
class PoolOccupancy:
    """A Dagster concurrency pool: `limit` None means unlimited."""

    name: str
    limit: int | None
    claimed: int = 0
    pending: int = 0
    from_default: bool = False

    @property
    def full(self) -> bool:
        return self.limit is not None and self.claimed >= self.limit

    def describe(self) -> str:
        limit = "unlimited" if self.limit is None else str(self.limit)
        return f"Dagster pool {self.name}: {self.claimed}/{limit} slots claimed, {self.pending} pending"


@dataclass(frozen=True)
class InstanceLoad:
    pools: Mapping[str, PoolOccupancy] = field(default_factory=dict)
    queued_runs: int = 0
    in_progress_runs: int = 0


@dataclass(frozen=True)
class K8sNode:
    """One node: its pool (label `unified-ai/pool`), accelerator label and GPU accounting."""

    name: str
    pool: str
    gpus_allocatable: int = 0
    gpus_requested: int = 0
    accelerator: str | None = None
    schedulable: bool = True

    @property
    def gpus_free(self) -> int:
        return max(0, self.gpus_allocatable - self.gpus_requested) if self.schedulable else 0


@dataclass(frozen=True)
class K8sCapacity:
    nodes: tuple[K8sNode, ...] = ()

    def pool(self, name: str) -> tuple[K8sNode, ...]:
        return tuple(node for node in self.nodes if node.pool == name)

    def pools(self) -> dict[str, dict[str, int]]:
        """Per node pool: nodes, allocatable GPUs, free GPUs (schedulable nodes only)."""
        out: dict[str, dict[str, int]] = {}
        for node in self.nodes:
            row = out.setdefault(node.pool, {"nodes": 0, "gpus_allocatable": 0, "gpus_free": 0})
            row["nodes"] += 1
            row["gpus_allocatable"] += node.gpus_allocatable if node.schedulable else 0
            row["gpus_free"] += node.gpus_free
        return out


@dataclass(frozen=True)
class RayNode:
    """One Ray node: its pool (node label `unified-ai/pool`), liveness, logical GPUs and CPUs
    (total and free) and GPU model (Ray's `accelerator_type:<name>` resource)."""

    node_id: str
    pool: str
    alive: bool = True
    gpus_total: float = 0
    gpus_free: float = 0
    cpus_total: float = 0
    cpus_free: float = 0
    accelerator: str | None = None
    is_head: bool = False

    @property
    def short_id(self) -> str:
        return self.node_id[:8]


@dataclass(frozen=True)
class RayCapacity:
    """A Ray cluster as its state and job APIs show it: nodes, and the jobs that wait for
    resources (`pending_jobs`, `pending_gpus` of them asking for GPUs)."""

    nodes: tuple[RayNode, ...] = ()
    pending_jobs: int = 0
    pending_gpus: float = 0
    address: str = ""

    def pool(self, name: str) -> tuple[RayNode, ...]:
        return tuple(node for node in self.nodes if node.pool == name)

    def node(self, node_id: str) -> RayNode | None:
        return next((n for n in self.nodes if n.node_id == node_id), None)

    def pools(self) -> dict[str, dict[str, float]]:
        """Per pool, live nodes only: nodes, GPUs and CPUs total and free."""
        out: dict[str, dict[str, float]] = {}
        for node in self.nodes:
            if not node.alive:
                continue
            row = out.setdefault(node.pool, dict.fromkeys(
                ("nodes", "gpus_total", "gpus_free", "cpus_total", "cpus_free"), 0))
            row["nodes"] += 1
            row["gpus_total"] += node.gpus_total
            row["gpus_free"] += node.gpus_free
            row["cpus_total"] += node.cpus_total
            row["cpus_free"] += node.cpus_free
        return out


@dataclass(frozen=True)
class CapacitySnapshot:
    """Everything the planner reads. `ray` set means GPU steps run as Ray jobs on the Ray
    cluster's GPU pool; else `kubernetes` set means on cluster nodes; otherwise on this host's
    CUDA devices."""

    host: HostCapacity = field(default_factory=HostCapacity)
    instance: InstanceLoad | None = None
    kubernetes: K8sCapacity | None = None
    taken_at: float = field(default_factory=time.time)
    ray: RayCapacity | None = None
    # Set for a snapshot read from a file (`plan --cluster`): its capacity is the file's
    # nodes, and no figure of this host describes it.
    recorded_from: str = ""

    def largest_gpu_unit(self) -> int:
        """Most GPUs on one host or node anywhere in the snapshot."""
        nodes = self.kubernetes.nodes if self.kubernetes else ()
        ray_nodes = self.ray.nodes if self.ray else ()
        return max([self.host.gpu_count, *(node.gpus_allocatable for node in nodes),
                    *(int(node.gpus_total) for node in ray_nodes)])

    def summary(self) -> str:
        host = self.host
        parts = [f"recorded cluster {self.recorded_from}"] if self.recorded_from else [
            f"host {host.hostname}: {host.cpu_count} cpu, load {host.load_avg[0]:.2f}, "
            f"{host.gpu_count} cuda" + (f" ({host.cuda_note})" if host.cuda_note else "")]
        if self.instance is not None:
            pools = ", ".join(
                f"{p.name} {p.claimed}/{'-' if p.limit is None else p.limit}"
                for p in self.instance.pools.values()
            )
            parts.append(f"dagster: {self.instance.queued_runs} queued, "
                         f"{self.instance.in_progress_runs} in progress runs; pools {pools or 'none'}")
        if self.kubernetes is not None:
            pools = ", ".join(
                f"{name} {row['gpus_free']}/{row['gpus_allocatable']} GPUs free"
                if row["gpus_allocatable"] else f"{name} {row['nodes']} node(s), no GPUs"
                for name, row in sorted(self.kubernetes.pools().items()))
            parts.append(f"k8s: {len(self.kubernetes.nodes)} nodes; {pools or 'no nodes'}")
        if self.ray is not None:
            pools = ", ".join(
                f"{name} {row['nodes']:g} node(s) {row['gpus_free']:g}/{row['gpus_total']:g} GPUs "
                f"{row['cpus_free']:g}/{row['cpus_total']:g} CPUs free"
                for name, row in sorted(self.ray.pools().items()))
            parts.append(f"ray: {sum(n.alive for n in self.ray.nodes)} live node(s); "
                         f"{pools or 'no live nodes'}; {self.ray.pending_jobs} pending job(s)")
        return "; ".join(parts)
