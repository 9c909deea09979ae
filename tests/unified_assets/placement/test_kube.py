"""Kubernetes capacity from recorded API responses (fixtures/nodes.json, fixtures/pods.json:
a NodeList and a PodList in the API's wire format)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import kubernetes
import pytest

from unified_assets.placement.kube import (
    ACTIVE_PODS_SELECTOR,
    UNLABELLED_POOL,
    fetch_k8s_capacity,
    gpus_requested_by_node,
    parse_k8s_capacity,
    pod_gpu_request,
)


def as_client_model(data: dict, kind: str):
    """The python client's model for a JSON response, as `list_node()` would return it."""
    client = kubernetes.client.ApiClient()
    return client.deserialize(SimpleNamespace(data=json.dumps(data)), kind)


def test_pods_holding_gpus_per_node(pod_list):
    # Running 1; Succeeded and unbound Pending ignored; init container 2 vs 1+1 -> 2, plus a
    # bound Pending pod (image pulling) -> 3 on the A100 node.
    assert gpus_requested_by_node(pod_list) == {
        "gke-unified-ai-gpu-7a8b": 1,
        "gke-unified-ai-gpu-big-5c6d": 3,
    }


@pytest.mark.parametrize(("containers", "init", "expected"), [
    ([{"resources": {"limits": {"nvidia.com/gpu": "2"}}}], [], 2),  # request defaults to limit
    ([{"resources": {"requests": {"nvidia.com/gpu": "1"}, "limits": {"nvidia.com/gpu": "1"}}},
      {"resources": {"limits": {"nvidia.com/gpu": "1"}}}], [], 2),
    ([{"resources": {}}], [{"resources": {"limits": {"nvidia.com/gpu": "4"}}}], 4),
    ([{"name": "no-resources"}], [], 0),
])
def test_pod_gpu_request(containers, init, expected):
    assert pod_gpu_request({"spec": {"containers": containers, "initContainers": init}}) == expected


def test_nodes_grouped_by_pool(node_list, pod_list):
    capacity = parse_k8s_capacity(node_list, pod_list)
    assert capacity.pools() == {
        "cpu": {"nodes": 2, "gpus_allocatable": 0, "gpus_free": 0},
        "gpu": {"nodes": 4, "gpus_allocatable": 2, "gpus_free": 1},  # 1 cordoned, 1 NotReady
        "gpu-big": {"nodes": 1, "gpus_allocatable": 4, "gpus_free": 1},
        UNLABELLED_POOL: {"nodes": 1, "gpus_allocatable": 0, "gpus_free": 0},
    }
    by_name = {n.name: n for n in capacity.nodes}
    busy, free = by_name["gke-unified-ai-gpu-7a8b"], by_name["gke-unified-ai-gpu-9c0d"]
    assert (busy.gpus_allocatable, busy.gpus_requested, busy.gpus_free) == (1, 1, 0)
    assert (free.gpus_free, free.accelerator) == (1, "nvidia-l4")
    assert not by_name["gke-unified-ai-gpu-1e2f"].schedulable  # cordoned
    assert not by_name["gke-unified-ai-gpu-3a4b"].schedulable  # Ready=Unknown
    assert by_name["gke-unified-ai-gpu-big-5c6d"].accelerator == "NVIDIA-A100-SXM4-80GB"


def test_without_pods_every_allocatable_gpu_is_free(node_list):
    assert parse_k8s_capacity(node_list).pools()["gpu-big"]["gpus_free"] == 4


def test_client_models_give_the_same_capacity(node_list, pod_list):
    """The live path serializes the client's models back to JSON: same result as the raw JSON."""
    nodes, pods = as_client_model(node_list, "V1NodeList"), as_client_model(pod_list, "V1PodList")
    to_json = kubernetes.client.ApiClient().sanitize_for_serialization
    assert parse_k8s_capacity(to_json(nodes), to_json(pods)) == parse_k8s_capacity(node_list, pod_list)


def test_fetch_uses_the_core_api(node_list, pod_list):
    calls = {}

    class FakeCoreApi:
        api_client = kubernetes.client.ApiClient()

        def list_node(self):
            return as_client_model(node_list, "V1NodeList")

        def list_pod_for_all_namespaces(self, field_selector):
            calls["selector"] = field_selector
            return as_client_model(pod_list, "V1PodList")

    capacity = fetch_k8s_capacity(FakeCoreApi())
    assert calls["selector"] == ACTIVE_PODS_SELECTOR
    assert capacity.pools()["gpu"]["gpus_free"] == 1
