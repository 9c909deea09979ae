"""The placement policy model: strict keys, errors that name the key, a default that matches
the compute profiles."""

from __future__ import annotations

import pytest
import yaml

from tests.policies import shipped_policy
from unified_assets.compute import PROFILES
from unified_assets.placement import DEFAULT_POLICY, PlacementPolicy
from unified_assets.policy import PolicyError, load_policy, parse_policy


def placement_policy(data: dict) -> PlacementPolicy:
    """`data` as the policy file's placement section (the one loader)."""
    return parse_policy({**shipped_policy(), "placement": data}).placement


def gpu_rule(**overrides) -> dict:
    return {"profiles": {"gpu-training": {"targets": ["gpu", "cpu"], **overrides}}}


@pytest.mark.parametrize(("data", "names"), [
    (gpu_rule(bogus=1), ["placement.profiles.gpu-training.bogus: Extra inputs are not permitted"]),
    (gpu_rule(on_unavailable="retry"), ["profiles.gpu-training.on_unavailable: Input should be"]),
    (gpu_rule(targets=["gpu"]),
     ["placement.profiles.gpu-training: on_unavailable='degrade_to_cpu' needs 'cpu' in targets"]),
    (gpu_rule(targets=["gpu"], on_unavailable="wait", small_input_rows=100),
     ["placement.profiles.gpu-training: small_input_rows needs 'cpu' in targets"]),
    (gpu_rule(targets=["gpu", "gpu"]), ["repeat a target"]),
    (gpu_rule(targets=["tpu"]), ["profiles.gpu-training.targets.0: Input should be 'gpu' or 'cpu'"]),
    (gpu_rule(small_input_rows=0),
     ["profiles.gpu-training.small_input_rows: Input should be greater than or equal to 1"]),
    ({"profiles": {}, "scalable_node_pools": {"gpu": {"gpus_per_node": 0}}},
     ["scalable_node_pools.gpu.gpus_per_node"]),
    ({"profile": {}}, ["placement.profiles: missing", "profile: Extra inputs are not permitted"]),
])
def test_invalid_policies_name_the_key(data, names):
    with pytest.raises(PolicyError) as caught:
        placement_policy(data)
    for name in names:
        assert name in str(caught.value)


def test_policy_from_yaml(tmp_path):
    path = tmp_path / "policy.yaml"
    shipped = yaml.safe_dump({k: v for k, v in shipped_policy().items() if k != "placement"})
    path.write_text(
        shipped +
        "placement:\n"
        "  profiles:\n"
        "    gpu-training:\n"
        "      on_unavailable: wait\n"
        "      degraded_settings: {device: cpu, batch_size: 256}\n"
        "  scalable_node_pools:\n"
        "    gpu: {gpus_per_node: 1, accelerator: nvidia-l4}\n"
    )
    policy = load_policy(path).placement
    rule = policy.profiles["gpu-training"]
    assert (rule.targets, rule.on_unavailable) == (("gpu", "cpu"), "wait")
    assert rule.degraded_settings == {"device": "cpu", "batch_size": 256}
    assert policy.scalable_node_pools["gpu"].gpus_per_node == 1


def test_default_policy_matches_the_profiles():
    from unified_assets.serving.profiles import SERVE_PROFILES

    # Every batch profile has its rule; the request-time replicas follow one (FOLLOWS).
    assert set(DEFAULT_POLICY.profiles) == set(PROFILES) | set(SERVE_PROFILES)
    for name, profile in {**PROFILES, **SERVE_PROFILES}.items():
        rule = DEFAULT_POLICY.profiles[name]
        assert profile.device in rule.targets, name
    gpu = DEFAULT_POLICY.profiles["gpu-training"]
    assert (gpu.targets, gpu.on_unavailable) == (("gpu", "cpu"), "degrade_to_cpu")
    assert gpu.degraded_settings == {"device": "cpu"}
    assert gpu.small_input_rows == 10_000


def test_policy_is_immutable():
    with pytest.raises(Exception, match="frozen"):
        DEFAULT_POLICY.profiles["gpu-training"].on_unavailable = "wait"


@pytest.mark.parametrize("follower, source", [
    ("cpu-report", "cpu-light"), ("serve-cpu", "cpu-light"), ("serve-gpu", "gpu-training")])
def test_later_profiles_follow_a_rule_unless_the_policy_names_their_own(follower, source):
    """cpu-report (reports) and serve-cpu / serve-gpu (request-time replicas) came after
    policies were written: one without a rule for them places them as it places the work they
    are like, rather than failing every such step, and the reason names the key that decided."""
    rules = {"cpu-light": {"targets": ["cpu"], "on_unavailable": "wait",
                           "on_oom_profile": "cpu-training"},
             "cpu-training": {"targets": ["cpu"]},
             "gpu-training": {"targets": ["gpu"], "on_unavailable": "fail_and_escalate"}}
    policy = placement_policy({"profiles": rules})
    assert policy.profiles[follower] == policy.profiles[source]
    assert policy.rule_key(follower) == f"profiles.{source}"
    assert policy.model_copy().rule_key(follower) == f"profiles.{source}"
    own = placement_policy({"profiles": {**rules, follower: {"targets": ["cpu"]}}})
    assert own.profiles[follower] != own.profiles[source]
    assert own.rule_key(follower) == f"profiles.{follower}"
    assert own.rule_key(source) == f"profiles.{source}"


def test_the_shipped_policy_names_the_report_rule():
    assert "cpu-report" in shipped_policy()["placement"]["profiles"]
