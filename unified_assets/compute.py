"""Compute profiles: what a step needs, declared once per asset.

`ComputeProfile.asset_kwargs()` is the one helper that turns a requirement into what
Dagster needs (semantic tag, concurrency pool, per-step Kubernetes pod config), so no
asset writes tag dictionaries by hand.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

COMPUTE_TAG = "unified-ai/compute"
PROFILE_TAG = "unified-ai/profile"
GPU_RESOURCE = "nvidia.com/gpu"
GPU_TAINT_KEY = "nvidia.com/gpu"


@dataclass(frozen=True)
class ComputeProfile:
    name: str
    device: Literal["cpu", "gpu"]
    cpu: str = "1"
    memory: str = "2Gi"
    gpus: int = 0
    accelerator: str | None = None
    latency: Literal["batch", "interactive"] = "batch"

    def __post_init__(self) -> None:
        if self.device == "gpu" and self.gpus < 1:
            raise ValueError(f"profile {self.name!r}: a gpu profile needs gpus >= 1")
        if self.device == "cpu" and self.gpus:
            raise ValueError(f"profile {self.name!r}: a cpu profile cannot request gpus")

    @property
    def pool(self) -> str:
        return f"{self.device}-pool"

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
            selector = {"unified-ai/pool": "gpu"}
            if self.accelerator:
                selector["cloud.google.com/gke-accelerator"] = self.accelerator
            pod_spec["node_selector"] = selector
        return {
            "container_config": {"resources": {"requests": requests, "limits": limits}},
            "pod_spec_config": pod_spec,
        }

    def op_tags(self) -> dict[str, Any]:
        return {
            COMPUTE_TAG: self.device,
            PROFILE_TAG: self.name,
            "dagster-k8s/config": self.k8s_config(),
        }

    def asset_kwargs(self) -> dict[str, Any]:
        return {"pool": self.pool, "op_tags": self.op_tags()}


CPU_LIGHT = ComputeProfile(name="cpu-light", device="cpu", cpu="500m", memory="1Gi")
CPU_TRAINING = ComputeProfile(name="cpu-training", device="cpu", cpu="2", memory="4Gi")
GPU_TRAINING = ComputeProfile(name="gpu-training", device="gpu", cpu="2", memory="8Gi", gpus=1)
