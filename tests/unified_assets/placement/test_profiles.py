"""`ComputeProfile.asset_kwargs()` feeds every executor: the tags are read back here by the
executors' own code (dagster-aws's ECS step handler, dagster-k8s's tag parser)."""

from __future__ import annotations

import json

import dagster as dg
import pytest
from dagster_aws.ecs.executor import EcsStepHandler
from dagster_k8s.job import get_user_defined_k8s_config

from unified_assets.compute import (
    CPU_LIGHT,
    CPU_TRAINING,
    GPU_TRAINING,
    PROFILES,
    ComputeProfile,
    cpu_cores,
    memory_mib,
)


def step_tags(profile: ComputeProfile) -> dict[str, str]:
    """The tags Dagster gives the step of an asset declared with this profile."""

    @dg.asset(name=f"probe_{profile.name.replace('-', '_')}", **profile.asset_kwargs())
    def _asset() -> None: ...

    return dict(_asset.op.tags)


def ecs_overrides(tags: dict[str, str]) -> tuple[dict, dict]:
    """What dagster-aws's EcsStepHandler derives from step tags (no AWS: only the pure part)."""
    handler = object.__new__(EcsStepHandler)
    handler._cpu = handler._memory = handler._ephemeral_storage = None
    handler._task_overrides = {}
    return handler._get_task_overrides(tags), handler._get_container_overrides(tags)


@pytest.mark.parametrize(("quantity", "cores"), [("500m", 0.5), ("2", 2.0), ("1.5", 1.5), ("250m", 0.25)])
def test_cpu_quantities(quantity, cores):
    assert cpu_cores(quantity) == cores


@pytest.mark.parametrize(("quantity", "mib"),
                         [("1Gi", 1024), ("8Gi", 8192), ("512Mi", 512), ("2G", 1908), ("1048576Ki", 1024)])
def test_memory_quantities(quantity, mib):
    assert memory_mib(quantity) == mib


@pytest.mark.parametrize(("bad", "message"), [
    ({"cpu": "two"}, "not a CPU quantity: 'two'"),
    ({"memory": "8GB"}, "not a memory quantity: '8GB'"),
    ({"latency": "urgent"}, "profile 'x': latency must be one of"),
    ({"accelerator": "nvidia-l4"}, "profile 'x': a cpu profile cannot name an accelerator"),
])
def test_bad_profiles_are_rejected(bad, message):
    with pytest.raises(ValueError, match=message):
        ComputeProfile(name="x", device="cpu", **bad)


@pytest.mark.parametrize(
    ("profile", "cpu_units", "memory", "gpu_requirement"),
    [(CPU_LIGHT, "512", "1024", None), (CPU_TRAINING, "2048", "4096", None),
     (GPU_TRAINING, "2048", "8192", [{"type": "GPU", "value": "1"}])],
)
def test_ecs_executor_reads_the_profile_tags(profile, cpu_units, memory, gpu_requirement):
    task, container = ecs_overrides(step_tags(profile))
    assert task == {"cpu": cpu_units, "memory": memory}
    assert container.get("resourceRequirements") == gpu_requirement


@pytest.mark.parametrize("profile", list(PROFILES.values()), ids=list(PROFILES))
def test_k8s_tag_parses_with_dagster_k8s(profile):
    tags = step_tags(profile)
    config = get_user_defined_k8s_config(tags)
    limits = config.container_config["resources"]["limits"]
    assert limits.get("nvidia.com/gpu") == (str(profile.gpus) if profile.device == "gpu" else None)
    tolerations = config.pod_spec_config.get("tolerations", [])
    assert any(t["key"] == "nvidia.com/gpu" for t in tolerations) == (profile.device == "gpu")
    assert tags["unified-ai/profile"] == profile.name
    assert tags["unified-ai/compute"] == profile.device


def test_latency_sets_dagster_step_priority():
    interactive = ComputeProfile(name="gpu-online", device="gpu", gpus=1, latency="interactive")
    assert step_tags(interactive)["dagster/priority"] == "10"
    assert "dagster/priority" not in step_tags(GPU_TRAINING)


def test_accelerator_goes_to_the_node_selector():
    l4 = ComputeProfile(name="gpu-l4", device="gpu", gpus=2, accelerator="nvidia-l4")
    selector = l4.k8s_config()["pod_spec_config"]["node_selector"]
    assert selector == {"unified-ai/pool": "gpu", "cloud.google.com/gke-accelerator": "nvidia-l4"}
    assert json.loads(l4.ecs_tags()["ecs/container_overrides"])["resourceRequirements"][0]["value"] == "2"


def test_cpu_twin_drops_the_gpu_only():
    twin = GPU_TRAINING.as_cpu()
    assert (twin.name, twin.device, twin.gpus) == ("gpu-training", "cpu", 0)
    assert (twin.cpu, twin.memory) == ("2", "8Gi")
    assert twin.pool == "cpu-pool"
    assert "nvidia.com/gpu" not in twin.k8s_config()["container_config"]["resources"]["limits"]
    assert twin.k8s_config()["pod_spec_config"] == {}


def test_asset_kwargs_is_the_single_entry_point():
    kwargs = GPU_TRAINING.asset_kwargs()
    assert set(kwargs) == {"pool", "op_tags"}
    assert kwargs["pool"] == "gpu-pool"
    expected = {"ecs/cpu", "ecs/memory", "ecs/container_overrides", "dagster-k8s/config"}
    assert expected <= set(kwargs["op_tags"])
