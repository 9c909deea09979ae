"""Probes that fill a `CapacitySnapshot`: this host (CPUs, load, CUDA devices) and the Dagster
instance (pool occupancy, run counts). torch and dagster are imported inside the functions."""

from __future__ import annotations

import os
import socket
import sys
import time
from collections.abc import Iterable
from importlib import metadata
from pathlib import Path
from typing import Any

from unified_assets.compute import (
    GPU_NODE_POOL,
    PROFILES,
    cluster_pool_slots,
    pool_slots,
    ray_pool_slots,
)
from unified_assets.placement.snapshot import (
    CapacitySnapshot,
    CudaDevice,
    HostCapacity,
    InstanceLoad,
    PoolOccupancy,
)

MIB = 2**20
DEFAULT_POOLS = tuple(sorted({profile.pool for profile in PROFILES.values()}))


def probe_cuda() -> tuple[tuple[CudaDevice, ...], str]:
    """CUDA devices seen by torch, and a note when there are none. Any failure (torch missing,
    CPU-only build, driver error) means zero GPUs, never an exception."""
    if "torch" not in sys.modules:
        # A CPU build says so in its version (`2.13.0+cpu`): answered from the installed
        # metadata, not a 1.7-3 s import (the pool-limits sensor's first tick, in the code
        # server, held up every other sensor's). Any other build is asked below.
        try:
            installed = metadata.version("torch")
        except metadata.PackageNotFoundError:
            installed = ""
        if installed.endswith("+cpu"):
            return (), f"torch {installed} has no CUDA build"
    try:
        import torch
    except Exception as exc:  # ImportError, or a broken install raising anything else
        return (), f"torch not importable: {type(exc).__name__}: {exc}"
    if getattr(torch.version, "cuda", None) is None:
        return (), f"torch {torch.__version__} has no CUDA build"
    try:
        if not torch.cuda.is_available():
            return (), "torch.cuda.is_available() is False"
        devices = []
        for index in range(torch.cuda.device_count()):
            free, total = torch.cuda.mem_get_info(index)
            devices.append(CudaDevice(index, torch.cuda.get_device_name(index),
                                      total // MIB, free // MIB))
    except Exception as exc:
        return (), f"CUDA probe failed: {type(exc).__name__}: {exc}"
    return tuple(devices), "" if devices else "no CUDA device"


def usable_cpus(cgroup_cpu_max: Path = Path("/sys/fs/cgroup/cpu.max")) -> int:
    """CPUs this process may use: affinity, capped by a cgroup v2 quota (containers, pods)."""
    count = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    try:
        quota, period = cgroup_cpu_max.read_text().split()
        if quota != "max":
            count = min(count, max(1, int(-(-int(quota) // int(period)))))
    except (OSError, ValueError):
        pass
    return count


def probe_host(*, cuda: bool = True) -> HostCapacity:
    """This host: usable CPUs, load average and (if `cuda`) CUDA devices."""
    devices, note = probe_cuda() if cuda else ((), "not probed")
    load = os.getloadavg() if hasattr(os, "getloadavg") else (0.0, 0.0, 0.0)
    return HostCapacity(hostname=socket.gethostname(), cpu_count=usable_cpus(),
                        load_avg=(load[0], load[1], load[2]), cuda_devices=devices, cuda_note=note)


def probe_instance(instance: Any, pools: Iterable[str] = DEFAULT_POOLS) -> InstanceLoad:
    """Pool occupancy (limits from `get_pool_limits()` plus `pools`, claimed slots and pending
    steps from `get_concurrency_infos`) and queued / in-progress run counts."""
    from dagster import DagsterRunStatus, RunsFilter
    from dagster._core.storage.dagster_run import IN_PROGRESS_RUN_STATUSES

    storage = instance.event_log_storage
    occupancy: dict[str, PoolOccupancy] = {}
    if storage.supports_global_concurrency_limits:
        names = list(dict.fromkeys([*pools, *(limit.name for limit in storage.get_pool_limits())]))
        for name, info in storage.get_concurrency_infos(names).items():
            occupancy[name] = PoolOccupancy(
                name=name, limit=info.limit, claimed=info.active_slot_count,
                pending=info.pending_step_count, from_default=info.using_default_limit,
            )
    queued = instance.get_runs_count(RunsFilter(statuses=[DagsterRunStatus.QUEUED]))
    in_progress = instance.get_runs_count(RunsFilter(statuses=list(IN_PROGRESS_RUN_STATUSES)))
    return InstanceLoad(pools=occupancy, queued_runs=queued, in_progress_runs=in_progress)


def machine_pool_slots(placement: Any = None, *, kubernetes: bool = False,
                       core_api: Any = None, ray_address: str | None = None) -> dict[str, int]:
    """Pool slots this deployment should have: locally from this host's usable cores and CUDA
    devices; on Kubernetes from the GPU node pool's allocatable GPUs plus the node pools the
    placement policy (`scalable_node_pools`) says can scale up; on Ray from the live nodes'
    CPUs outside the GPU pool and the GPU pool's logical GPUs (not this host's)."""
    if ray_address is not None:
        from unified_assets.placement.ray_capacity import fetch_ray_capacity
        from unified_assets.placement.ray_executor import dashboard_address

        pools = fetch_ray_capacity(dashboard_address(ray_address)).pools()
        cpus = sum(row["cpus_total"] for pool, row in pools.items() if pool != GPU_NODE_POOL)
        return ray_pool_slots(cpus, pools.get(GPU_NODE_POOL, {}).get("gpus_total", 0))
    if kubernetes:
        from unified_assets.placement.kube import fetch_k8s_capacity

        allocatable = fetch_k8s_capacity(core_api).pools().get(GPU_NODE_POOL, {})
        scalable = sum(p.gpus_per_node for p in placement.scalable_node_pools.values()) \
            if placement is not None else 0
        return cluster_pool_slots(allocatable.get("gpus_allocatable", 0), scalable)
    devices, _ = probe_cuda()
    return pool_slots(usable_cpus(), len(devices))


def apply_pool_limits(instance: Any, wanted: dict[str, int],
                      applied: dict[str, int]) -> tuple[dict[str, int], list[str]]:
    """Set each pool's limit in the instance (the only place Dagster OSS keeps per-pool
    limits) to `wanted`, unless a person set it since we last did (`applied`: what we set
    before): an operator's `dagster instance concurrency set` wins. Returns what is now ours
    and one note per pool changed or left alone."""
    storage = instance.event_log_storage
    if not storage.supports_global_concurrency_limits:
        return applied, ["this instance's storage has no concurrency pools"]
    current = {limit.name: limit.limit for limit in storage.get_pool_limits()
               if not limit.from_default}
    ours, notes = {}, []
    for pool, slots in sorted(wanted.items()):
        now = current.get(pool)
        if now is not None and now != slots and applied.get(pool) != now:
            notes.append(f"{pool}: {now} slots set by an operator, kept (derived: {slots})")
            continue
        if now != slots:
            storage.set_concurrency_slots(pool, slots)
            notes.append(f"{pool}: {now if now is not None else 'default'} -> {slots} slots")
        ours[pool] = slots
    return ours, notes


def take_snapshot(instance: Any = None, *, kubernetes: bool = False, core_api: Any = None,
                  cuda: bool = True, ray_address: str | None = None) -> CapacitySnapshot:
    """Probe everything available: host always, the instance if given, Kubernetes if asked
    (`core_api`: a `kubernetes.client.CoreV1Api`, default from in-cluster or kube config), the
    Ray cluster whose dashboard is at `ray_address` if given."""
    from unified_assets.placement.kube import fetch_k8s_capacity

    ray = None
    if ray_address:
        from unified_assets.placement.ray_capacity import fetch_ray_capacity
        from unified_assets.placement.ray_executor import dashboard_address

        address = dashboard_address(ray_address)
        try:
            ray = fetch_ray_capacity(address)
        except OSError as error:  # refused, timed out, DNS: nothing can be placed on it now
            from unified_assets.placement.decision import PlacementError

            raise PlacementError(f"Ray cluster at {address} did not answer ({error}); "
                                 "nothing is launched until it does", retryable=True) from error
    return CapacitySnapshot(
        host=probe_host(cuda=cuda),
        instance=probe_instance(instance) if instance is not None else None,
        kubernetes=fetch_k8s_capacity(core_api) if kubernetes else None,
        taken_at=time.time(),
        ray=ray,
    )
