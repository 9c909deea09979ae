"""Compute profiles: what a step needs, declared once per asset.

`ComputeProfile.asset_kwargs()` is the one helper that turns a requirement into what
Dagster needs (semantic tags, concurrency pool, per-step Kubernetes pod config, per-step ECS
task overrides, step priority), so no asset writes tag dictionaries by hand.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, replace
from typing import Any, Literal

COMPUTE_TAG = "unified-ai/compute"
PROFILE_TAG = "unified-ai/profile"
GPU_RESOURCE = "nvidia.com/gpu"
GPU_TAINT_KEY = "nvidia.com/gpu"
POOL_LABEL = "unified-ai/pool"  # node label selecting the Kubernetes node pool
GPU_NODE_POOL = "gpu"  # value of POOL_LABEL on the GPU nodes (deploy/gpu/)
ACCELERATOR_LABEL = "cloud.google.com/gke-accelerator"
K8S_CONFIG_TAG = "dagster-k8s/config"
# Read by dagster-ray's step handler (dagster_ray.configs.RayExecutionConfig.from_tags): the
# Ray job's entrypoint CPUs, GPUs, memory (bytes) and custom resources.
RAY_CONFIG_TAG = "dagster-ray/config"
# Ray names a node's GPU model as the custom resource `accelerator_type:<name>` (e.g. "L4").
RAY_ACCELERATOR_PREFIX = "accelerator_type:"
# Step tags read by dagster-aws's `ecs_executor` (dagster_aws/ecs/executor.py,
# EcsStepHandler._get_task_overrides / _get_container_overrides): task-level CPU units and
# memory MiB as strings, container overrides as a JSON string.
ECS_CPU_TAG = "ecs/cpu"
ECS_MEMORY_TAG = "ecs/memory"
ECS_CONTAINER_OVERRIDES_TAG = "ecs/container_overrides"
# Dagster's step priority (dagster/priority): orders steps within a run and pool slot claims.
PRIORITY_TAG = "dagster/priority"
LATENCY_PRIORITY = {"batch": 0, "interactive": 10}

_CPU_RE = re.compile(r"^(\d+(?:\.\d+)?)(m?)$")
_MEMORY_RE = re.compile(r"^(\d+(?:\.\d+)?)(Ki|Mi|Gi|Ti|k|M|G|T)?$")
_MEMORY_FACTOR = {None: 1, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40,
                  "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12}


def cpu_cores(quantity: str) -> float:
    """A Kubernetes CPU quantity ("500m", "2", "1.5") in cores."""
    match = _CPU_RE.match(quantity.strip())
    if not match:
        raise ValueError(f"not a CPU quantity: {quantity!r} (use e.g. '500m' or '2')")
    value = float(match.group(1))
    return value / 1000 if match.group(2) else value


def memory_mib(quantity: str) -> int:
    """A Kubernetes memory quantity ("8Gi", "512Mi", "2G") in MiB, rounded up."""
    match = _MEMORY_RE.match(quantity.strip())
    if not match:
        raise ValueError(f"not a memory quantity: {quantity!r} (use e.g. '512Mi' or '8Gi')")
    return math.ceil(float(match.group(1)) * _MEMORY_FACTOR[match.group(2)] / 2**20)


@dataclass(frozen=True)
class ComputeProfile:
    name: str
    device: Literal["cpu", "gpu"]
    cpu: str = "1"
    memory: str = "2Gi"
    gpus: int = 0
    accelerator: str | None = None
    latency: Literal["batch", "interactive"] = "batch"
    # Concurrency pool; None: "<device>-pool". Light steps get their own pool so a rollback or
    # an approval never queues behind training for a slot.
    pool_name: str | None = None

    def __post_init__(self) -> None:
        if self.device == "gpu" and self.gpus < 1:
            raise ValueError(f"profile {self.name!r}: a gpu profile needs gpus >= 1")
        if self.device == "cpu" and self.gpus:
            raise ValueError(f"profile {self.name!r}: a cpu profile cannot request gpus")
        if self.device == "cpu" and self.accelerator:
            raise ValueError(f"profile {self.name!r}: a cpu profile cannot name an accelerator")
        if self.latency not in LATENCY_PRIORITY:
            raise ValueError(f"profile {self.name!r}: latency must be one of {list(LATENCY_PRIORITY)}")
        cpu_cores(self.cpu)
        memory_mib(self.memory)

    @property
    def pool(self) -> str:
        return self.pool_name or f"{self.device}-pool"

    def as_cpu(self) -> ComputeProfile:
        """The same profile without GPU: what a GPU step degraded to CPU runs with."""
        return replace(self, device="cpu", gpus=0, accelerator=None)

    def slots_on(self, cpus: int) -> int:
        """How many steps of this profile fit on `cpus` cores by its CPU request (at least 1)."""
        return max(1, math.floor(cpus / cpu_cores(self.cpu)))

    def k8s_config(self) -> dict[str, Any]:
        """`dagster-k8s/config` for the step pod: requests/limits, and for GPU steps the GPU
        limit, the node selector and the toleration for the GPU taint."""
        requests = {"cpu": self.cpu, "memory": self.memory}
        limits: dict[str, Any] = {"memory": self.memory}
        pod_spec: dict[str, Any] = {}
        if self.device == "gpu":
            limits[GPU_RESOURCE] = str(self.gpus)
            pod_spec["tolerations"] = [
                {"key": GPU_TAINT_KEY, "operator": "Exists", "effect": "NoSchedule"}
            ]
            selector = {POOL_LABEL: GPU_NODE_POOL}
            if self.accelerator:
                selector[ACCELERATOR_LABEL] = self.accelerator
            pod_spec["node_selector"] = selector
        return {
            "container_config": {"resources": {"requests": requests, "limits": limits}},
            "pod_spec_config": pod_spec,
        }

    def ecs_tags(self) -> dict[str, str]:
        """Step tags for `ecs_executor`: task CPU units (1 vCPU = 1024) and memory MiB, and for
        GPU steps a container override reserving the GPUs (needs the EC2 launch type)."""
        tags = {
            ECS_CPU_TAG: str(math.ceil(cpu_cores(self.cpu) * 1024)),
            ECS_MEMORY_TAG: str(memory_mib(self.memory)),
        }
        if self.device == "gpu":
            overrides = {"resourceRequirements": [{"type": "GPU", "value": str(self.gpus)}]}
            tags[ECS_CONTAINER_OVERRIDES_TAG] = json.dumps(overrides, separators=(",", ":"))
        return tags

    def ray_request(self) -> dict[str, Any]:
        """What a Ray job for this step asks for: CPUs, GPUs, memory in bytes, the accelerator
        as Ray's `accelerator_type:<name>` resource, and a node label selector that plays the
        role of the Kubernetes node selector and GPU taint: GPU steps only on the GPU pool,
        other steps never there (a CPU step must not take a GPU node's CPUs)."""
        resources = {f"{RAY_ACCELERATOR_PREFIX}{self.accelerator}": 0.001} if self.accelerator else {}
        selector = {POOL_LABEL: GPU_NODE_POOL if self.device == "gpu" else f"!{GPU_NODE_POOL}"}
        return {"num_cpus": cpu_cores(self.cpu), "num_gpus": self.gpus,
                "memory": memory_mib(self.memory) * 2**20, "resources": resources,
                "label_selector": selector}

    def ray_config(self) -> str:
        """The `dagster-ray/config` tag (a JSON string of dagster-ray's RayExecutionConfig), so
        dagster-ray's own executor also asks Ray for this profile (no label selector there)."""
        request = self.ray_request()
        fields = {k: request[k] for k in ("num_cpus", "num_gpus", "memory", "resources")}
        return json.dumps(fields, separators=(",", ":"), sort_keys=True)

    def op_tags(self) -> dict[str, Any]:
        tags: dict[str, Any] = {
            COMPUTE_TAG: self.device,
            PROFILE_TAG: self.name,
            K8S_CONFIG_TAG: self.k8s_config(),
            RAY_CONFIG_TAG: self.ray_config(),
            **self.ecs_tags(),
        }
        if LATENCY_PRIORITY[self.latency]:
            tags[PRIORITY_TAG] = str(LATENCY_PRIORITY[self.latency])
        return tags

    def asset_kwargs(self) -> dict[str, Any]:
        return {"pool": self.pool, "op_tags": self.op_tags()}


CPU_LIGHT = ComputeProfile(name="cpu-light", device="cpu", cpu="500m", memory="1Gi",
                           pool_name="light-pool")
CPU_TRAINING = ComputeProfile(name="cpu-training", device="cpu", cpu="2", memory="4Gi")
GPU_TRAINING = ComputeProfile(name="gpu-training", device="gpu", cpu="2", memory="8Gi", gpus=1)
# Evidently's reports keep a core busy for seconds each and no gate reads them: their own pool,
# so they never take the slots (or the cores) ingestion, judgement and decisions wait on.
CPU_REPORT = ComputeProfile(name="cpu-report", device="cpu", cpu="1", memory="2Gi",
                            pool_name="report-pool")
PROFILES: dict[str, ComputeProfile] = {
    p.name: p for p in (CPU_LIGHT, CPU_TRAINING, GPU_TRAINING, CPU_REPORT)}
POOLS: tuple[str, ...] = tuple(sorted({p.pool for p in PROFILES.values()}))
# Kubernetes: every step is its own pod and the cluster schedules CPU, so the CPU pools only
# bound how many pods one code location asks for at once; GPUs come from the cluster and policy.
K8S_CPU_POOL_SLOTS = {CPU_LIGHT.pool: 16, CPU_TRAINING.pool: 8, CPU_REPORT.pool: 4}


def report_slots(cpus: int) -> int:
    """Reports at once on `cpus` cores: a core each, one core always left to the lifecycle's
    own steps (at least one report slot)."""
    return max(1, CPU_REPORT.slots_on(cpus) - 1)


def pool_slots(cpus: int, gpus: int) -> dict[str, int]:
    """Slots per pool for a machine with `cpus` usable cores and `gpus` CUDA devices: light
    and CPU-training steps by how many of their CPU requests fit, one GPU step per device.
    The GPU pool keeps one slot without a GPU: its steps then run degraded on CPU and must
    not wait forever for a device that does not exist."""
    return {CPU_LIGHT.pool: CPU_LIGHT.slots_on(cpus),
            CPU_TRAINING.pool: CPU_TRAINING.slots_on(cpus),
            GPU_TRAINING.pool: max(1, gpus),
            CPU_REPORT.pool: report_slots(cpus)}


def ray_pool_slots(cpu_node_cpus: float, gpus: float) -> dict[str, int]:
    """Slots on a Ray cluster: CPU steps by how many of their CPU requests fit on the nodes
    outside the GPU pool (they are label-selected away from it), GPU steps one per logical GPU
    of the GPU pool; at least one each, for the reason `pool_slots` gives."""
    cpus = max(1, math.floor(cpu_node_cpus))
    return {CPU_LIGHT.pool: CPU_LIGHT.slots_on(cpus),
            CPU_TRAINING.pool: CPU_TRAINING.slots_on(cpus),
            GPU_TRAINING.pool: max(1, math.floor(gpus)),
            CPU_REPORT.pool: report_slots(cpus)}


def cluster_pool_slots(gpus_allocatable: int, scalable_gpus: int) -> dict[str, int]:
    """Slots on Kubernetes: GPU steps by the GPUs the cluster has now plus one node's worth of
    each GPU node pool the placement policy says can scale up (`scalable_node_pools`)."""
    return {**K8S_CPU_POOL_SLOTS, GPU_TRAINING.pool: max(1, gpus_allocatable + scalable_gpus)}
