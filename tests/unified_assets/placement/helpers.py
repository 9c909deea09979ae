"""Snapshot builders for the placement tests."""

from __future__ import annotations

import json
from pathlib import Path

from unified_assets.placement import (
    CapacitySnapshot,
    CudaDevice,
    HostCapacity,
    InstanceLoad,
    K8sCapacity,
    K8sNode,
    PoolOccupancy,
)

FIXTURES = Path(__file__).parent / "fixtures"


def load_fixture(name: str) -> dict:
    return json.loads((FIXTURES / name).read_text())


def l4(index: int = 0, free_mb: int = 22000) -> CudaDevice:
    return CudaDevice(index=index, name="NVIDIA L4", total_mb=23034, free_mb=free_mb)


def host(*devices: CudaDevice, note: str = "") -> HostCapacity:
    return HostCapacity(hostname="ws1", cpu_count=16, load_avg=(0.5, 0.4, 0.3),
                        cuda_devices=tuple(devices),
                        cuda_note=note or ("" if devices else "torch 2.13.0+cpu has no CUDA build"))


def pools(gpu_claimed: int = 0, gpu_limit: int | None = 1, cpu_claimed: int = 0,
          cpu_limit: int | None = 4) -> InstanceLoad:
    return InstanceLoad(pools={
        "gpu-pool": PoolOccupancy("gpu-pool", gpu_limit, gpu_claimed),
        "cpu-pool": PoolOccupancy("cpu-pool", cpu_limit, cpu_claimed),
    }, queued_runs=0, in_progress_runs=1)


def local(*devices: CudaDevice, instance: InstanceLoad | None = None) -> CapacitySnapshot:
    return CapacitySnapshot(host=host(*devices), instance=instance, taken_at=0.0)


def cluster(*gpu_nodes: tuple[int, int], accelerator: str = "nvidia-l4",
            instance: InstanceLoad | None = None) -> CapacitySnapshot:
    """A cluster with two CPU nodes and GPU nodes given as (allocatable, requested)."""
    nodes = [K8sNode("cpu-1", "cpu"), K8sNode("cpu-2", "cpu")]
    nodes += [K8sNode(f"gpu-{i}", "gpu", alloc, used, accelerator)
              for i, (alloc, used) in enumerate(gpu_nodes)]
    return CapacitySnapshot(host=host(), instance=instance,
                            kubernetes=K8sCapacity(tuple(nodes)), taken_at=0.0)
