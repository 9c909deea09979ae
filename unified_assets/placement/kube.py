"""Kubernetes GPU capacity: allocatable `nvidia.com/gpu` per node, grouped by the node label
`unified-ai/pool`, minus the GPUs requested by pods bound to each node.

The parsers take the API's JSON (camelCase, as `kubectl get -o json` prints it or as
`ApiClient.sanitize_for_serialization` turns the python client's models back into it), so the
same code reads recorded fixtures and live responses. `kubernetes` is imported lazily."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from unified_assets.compute import ACCELERATOR_LABEL, GPU_RESOURCE, POOL_LABEL
from unified_assets.placement.snapshot import K8sCapacity, K8sNode

# Node labels naming the GPU model: GKE's, then NVIDIA GPU feature discovery's.
ACCELERATOR_LABELS = (ACCELERATOR_LABEL, "nvidia.com/gpu.product")
UNLABELLED_POOL = "(no pool label)"
# Pods in these phases hold no resources; the scheduler counts every other pod bound to a node.
FINISHED_PHASES = frozenset({"Succeeded", "Failed"})
ACTIVE_PODS_SELECTOR = "status.phase!=Succeeded,status.phase!=Failed"


def _count(quantity: Any) -> int:
    """An extended-resource quantity ("1", 2) as an int; extended resources are whole numbers."""
    return int(str(quantity)) if quantity not in (None, "") else 0


def pod_gpu_request(pod: Mapping[str, Any]) -> int:
    """GPUs a pod holds: max(sum over containers, largest init container), where a container's
    request defaults to its limit (as the API server defaults extended resources)."""
    spec = pod.get("spec") or {}

    def one(container: Mapping[str, Any]) -> int:
        resources = container.get("resources") or {}
        requests, limits = resources.get("requests") or {}, resources.get("limits") or {}
        return _count(requests.get(GPU_RESOURCE, limits.get(GPU_RESOURCE)))

    running = sum(one(c) for c in spec.get("containers") or [])
    init = max((one(c) for c in spec.get("initContainers") or []), default=0)
    return max(running, init)


def gpus_requested_by_node(pod_list: Mapping[str, Any]) -> dict[str, int]:
    """GPUs held per node by the pods of a PodList that are bound and not finished."""
    held: dict[str, int] = {}
    for pod in pod_list.get("items") or []:
        node = (pod.get("spec") or {}).get("nodeName")
        if not node or (pod.get("status") or {}).get("phase") in FINISHED_PHASES:
            continue
        gpus = pod_gpu_request(pod)
        if gpus:
            held[node] = held.get(node, 0) + gpus
    return held


def _schedulable(node: Mapping[str, Any]) -> bool:
    if (node.get("spec") or {}).get("unschedulable"):
        return False
    conditions = (node.get("status") or {}).get("conditions") or []
    ready = next((c for c in conditions if c.get("type") == "Ready"), None)
    return ready is not None and ready.get("status") == "True"


def parse_node(node: Mapping[str, Any], gpus_requested: int = 0) -> K8sNode:
    metadata = node.get("metadata") or {}
    labels = metadata.get("labels") or {}
    allocatable = (node.get("status") or {}).get("allocatable") or {}
    accelerator = next((labels[key] for key in ACCELERATOR_LABELS if labels.get(key)), None)
    return K8sNode(
        name=metadata.get("name", "?"),
        pool=labels.get(POOL_LABEL, UNLABELLED_POOL),
        gpus_allocatable=_count(allocatable.get(GPU_RESOURCE)),
        gpus_requested=gpus_requested,
        accelerator=accelerator,
        schedulable=_schedulable(node),
    )


def parse_k8s_capacity(node_list: Mapping[str, Any],
                       pod_list: Mapping[str, Any] | None = None) -> K8sCapacity:
    """A `K8sCapacity` from a NodeList and (optionally) a PodList of active pods."""
    held = gpus_requested_by_node(pod_list) if pod_list else {}
    nodes = sorted((parse_node(node, held.get((node.get("metadata") or {}).get("name", ""), 0))
                    for node in node_list.get("items") or []), key=lambda n: (n.pool, n.name))
    return K8sCapacity(nodes=tuple(nodes))


def fetch_k8s_capacity(core_api: Any = None) -> K8sCapacity:
    """List nodes and active pods with the `kubernetes` client and parse them. Needs RBAC to
    list nodes and pods cluster-wide."""
    import kubernetes

    if core_api is None:
        try:
            kubernetes.config.load_incluster_config()
        except kubernetes.config.ConfigException:
            kubernetes.config.load_kube_config()
        core_api = kubernetes.client.CoreV1Api()
    to_json = core_api.api_client.sanitize_for_serialization
    nodes = to_json(core_api.list_node())
    pods = to_json(core_api.list_pod_for_all_namespaces(field_selector=ACTIVE_PODS_SELECTOR))
    return parse_k8s_capacity(nodes, pods)
