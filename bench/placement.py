"""Planning time of the placement planner for graphs of 10, 100 and 1,000 steps.

Each graph mixes CPU and GPU profiles (GPU steps with assorted input sizes, some with an
accelerator or two GPUs) and is planned against two snapshots: a workstation (2 CUDA devices,
the GPU pool full) and a Kubernetes cluster (200 nodes, 48 GPU nodes, some busy, plus Dagster
pool occupancy). `plan()` is timed alone, and `plan_to_tags()` (the run tags) separately;
each figure is the minimum of --repeat runs (the least noisy estimate).

Usage: python bench/placement.py [--repeat 30]
The last line printed is `plan_ms_per_step=<x>` for the 1,000-step graph on the cluster.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from unified_assets.compute import CPU_LIGHT, CPU_TRAINING, GPU_TRAINING, ComputeProfile  # noqa: E402
from unified_assets.placement import (  # noqa: E402
    DEFAULT_POLICY,
    CapacitySnapshot,
    CudaDevice,
    HostCapacity,
    InstanceLoad,
    K8sCapacity,
    K8sNode,
    PlacementPolicy,
    PoolOccupancy,
    StepRequirement,
    plan,
    plan_to_tags,
)

SIZES = (10, 100, 1000)
GPU_L4 = ComputeProfile(name="gpu-l4", device="gpu", cpu="4", memory="16Gi", gpus=1,
                        accelerator="nvidia-l4")
GPU_PAIR = ComputeProfile(name="gpu-pair", device="gpu", cpu="8", memory="32Gi", gpus=2)
PROFILES = (CPU_LIGHT, CPU_TRAINING, CPU_LIGHT, GPU_TRAINING, CPU_TRAINING, GPU_L4, GPU_PAIR)
POLICY = PlacementPolicy.model_validate({"profiles": {
    **DEFAULT_POLICY.model_dump()["profiles"],
    "gpu-l4": {"on_unavailable": "wait", "min_free_gpu_memory_mb": 4000},
    "gpu-pair": {"on_unavailable": "degrade_to_cpu", "degraded_settings": {"device": "cpu"}},
}})


def steps(n: int) -> list[StepRequirement]:
    return [StepRequirement(f"asset_{i:04d}", PROFILES[i % len(PROFILES)],
                            input_rows=(i * 7919) % 60_000 if i % 5 else None)
            for i in range(n)]


def snapshots() -> dict[str, CapacitySnapshot]:
    pools = InstanceLoad(pools={"gpu-pool": PoolOccupancy("gpu-pool", 8, 5, 2),
                                "cpu-pool": PoolOccupancy("cpu-pool", 64, 20)},
                         queued_runs=3, in_progress_runs=6)
    nodes = [K8sNode(f"cpu-{i:03d}", "cpu") for i in range(150)]
    nodes += [K8sNode(f"gpu-{i:03d}", "gpu", 2 if i % 4 else 1, (i % 3), "nvidia-l4", i % 11 != 0)
              for i in range(48)]
    nodes += [K8sNode("sys-a", "(no pool label)"), K8sNode("sys-b", "(no pool label)")]
    devices = (CudaDevice(0, "NVIDIA L4", 23034, 21000), CudaDevice(1, "NVIDIA L4", 23034, 900))
    workstation = CapacitySnapshot(
        host=HostCapacity("ws", 16, (1.0, 1.0, 1.0), devices),
        instance=InstanceLoad(pools={"gpu-pool": PoolOccupancy("gpu-pool", 1, 1, 1),
                                     "cpu-pool": PoolOccupancy("cpu-pool", 4, 1)}))
    cluster = CapacitySnapshot(host=HostCapacity("run-pod", 2), instance=pools,
                               kubernetes=K8sCapacity(tuple(nodes)))
    return {"workstation": workstation, "cluster": cluster}


def best_ms(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return min(times) * 1000


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=30)
    args = parser.parse_args()
    print(f"machine: {cpu_model()}, {os.cpu_count()} cpu, {platform.platform()}, "
          f"python {platform.python_version()}")
    print(f"repeat: {args.repeat} (minimum shown)\n")
    header = f"{'steps':>6}  {'snapshot':<12} {'plan ms':>9} {'ms/step':>9} {'tags ms':>9}  placed"
    print(header)
    print("-" * len(header))
    headline = None
    for name, snapshot in snapshots().items():
        for n in SIZES:
            graph = steps(n)
            the_plan = plan(graph, snapshot, POLICY)  # warm-up, and the counts shown
            plan_ms = best_ms(lambda g=graph, s=snapshot: plan(g, s, POLICY), args.repeat)
            tags_ms = best_ms(lambda p=the_plan: plan_to_tags(p), args.repeat)
            counts = the_plan.counts()
            placed = (f"gpu={counts['gpu']} cpu={counts['cpu']} degraded={counts['degraded']} "
                      f"wait={counts['wait']}")
            print(f"{n:>6}  {name:<12} {plan_ms:>9.3f} {plan_ms / n:>9.4f} {tags_ms:>9.3f}  {placed}")
            if name == "cluster" and n == SIZES[-1]:
                headline = plan_ms / n
    print(f"plan_ms_per_step={headline:.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
