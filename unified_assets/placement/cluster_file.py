"""A recorded cluster as a capacity snapshot, so `plan --cluster FILE` and `k8s-manifests
--cluster FILE` show what the planner decides on that cluster from any machine (a laptop
without GPUs included): the GPU step's manifest carries its GPU request.

The file lists nodes as `kubectl get nodes` would report them:

    nodes:
      - {name: cpu-1, pool: cpu}
      - {name: gpu-1, pool: gpu, gpus: 1, gpus_in_use: 0, accelerator: nvidia-l4}
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from unified_assets.placement.snapshot import CapacitySnapshot, HostCapacity, K8sCapacity, K8sNode


class ClusterFileError(ValueError):
    """The file cannot be read as a cluster; the message names the file and the field."""


class _Node(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    name: str = Field(min_length=1)
    pool: str = Field(min_length=1, description="the node's `unified-ai/pool` label")
    gpus: int = Field(default=0, ge=0, description="allocatable nvidia.com/gpu")
    gpus_in_use: int = Field(default=0, ge=0, description="GPUs requested by running pods")
    accelerator: str | None = None
    schedulable: bool = True


class _Cluster(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    nodes: list[_Node]


def _field(location: tuple) -> str:
    out = ""
    for part in location:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def load_cluster_file(path: str | Path) -> CapacitySnapshot:
    """The snapshot the planner would take on that cluster, with no load on its pools."""
    import yaml

    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as error:
        raise ClusterFileError(f"{path}: cannot be read as YAML: {error}") from None
    try:
        cluster = _Cluster.model_validate(raw if raw is not None else {})
    except ValidationError as error:
        first = error.errors()[0]
        value = first.get("input")
        what = "unknown field" if first["type"] == "extra_forbidden" else first["msg"]
        shown = "" if first["type"] in ("missing", "extra_forbidden") else f" {value!r}:"
        raise ClusterFileError(f"{path}: {_field(first['loc'])}:{shown} {what}") from None
    if not cluster.nodes:
        raise ClusterFileError(f"{path}: nodes: no node listed")
    for index, node in enumerate(cluster.nodes):
        if node.gpus_in_use > node.gpus:
            raise ClusterFileError(f"{path}: nodes[{index}].gpus_in_use: {node.gpus_in_use} is "
                                   f"more than its {node.gpus} GPUs")
    nodes = tuple(K8sNode(name=n.name, pool=n.pool, gpus_allocatable=n.gpus,
                          gpus_requested=n.gpus_in_use, accelerator=n.accelerator,
                          schedulable=n.schedulable) for n in cluster.nodes)
    return CapacitySnapshot(host=HostCapacity(hostname=f"recorded cluster {path.name}"),
                            kubernetes=K8sCapacity(nodes), recorded_from=str(path))
