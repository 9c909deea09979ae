"""The planner against local and Kubernetes snapshots, per policy rule, and re-validation at
step start."""

from __future__ import annotations

from dataclasses import replace

import pytest

from tests.unified_assets.placement.helpers import cluster, host, l4, local, pools
from unified_assets.compute import CPU_LIGHT, CPU_TRAINING, GPU_TRAINING, ComputeProfile
from unified_assets.placement import (
    DEFAULT_POLICY,
    CapacitySnapshot,
    PlacementError,
    PlacementPolicy,
    StepRequirement,
    decide_at_start,
    plan,
    plan_to_tags,
    revalidate,
)
from unified_assets.placement.kube import parse_k8s_capacity
from unified_assets.placement.snapshot import InstanceLoad, PoolOccupancy

TORCH = StepRequirement("model_torch", GPU_TRAINING, input_rows=50_000)
SKLEARN = StepRequirement("model_sklearn", CPU_TRAINING, input_rows=50_000)
L4_PROFILE = ComputeProfile(name="gpu-l4", device="gpu", cpu="4", memory="16Gi", gpus=1,
                            accelerator="nvidia-l4")
A100_PROFILE = ComputeProfile(name="gpu-a100", device="gpu", gpus=1, accelerator="nvidia-a100-80gb")


def policy(on_unavailable: str = "degrade_to_cpu", **rule) -> PlacementPolicy:
    """Every GPU profile under one rule; cpu-training waits, cpu-light escalates."""
    gpu = {"targets": ["gpu", "cpu"], "on_unavailable": on_unavailable,
           "degraded_settings": {"device": "cpu", "batch_size": 256}, **rule}
    return PlacementPolicy.model_validate({"profiles": {
        **dict.fromkeys(("gpu-training", "gpu-l4", "gpu-a100", "gpu-quad"), gpu),
        "cpu-training": {"targets": ["cpu"], "on_unavailable": "wait"},
        "cpu-light": {"targets": ["cpu"], "on_unavailable": "fail_and_escalate"},
    }})


def only(snapshot: CapacitySnapshot, step: StepRequirement = TORCH, rules=None):
    return plan([step], snapshot, rules or policy())[step.step_key]


# --- GPU free ---------------------------------------------------------------------------------

@pytest.mark.parametrize(("snapshot", "where", "detail"), [
    (local(l4(0, 20000), l4(1, 22000)), "cuda:1", "cuda:1 on ws1 (NVIDIA L4 22000 MiB free)"),
    (local(l4(), instance=pools(gpu_claimed=0)), "cuda:0", "cuda:0 on ws1"),
    (cluster((1, 1), (1, 0)), "k8s node pool gpu", "node gpu-1 has 1/1 GPU(s) free"),
])
def test_gpu_free_runs_on_gpu(snapshot, where, detail):
    decision = only(snapshot)
    assert (decision.target, decision.where, decision.fallback) == ("gpu", where, "none")
    assert detail in decision.reason and decision.reason.startswith("GPU free: ")
    assert decision.settings == {}
    assert [(a.target, a.rejected) for a in decision.alternatives] == [
        ("cpu", "GPU placement available; cpu is only the fallback")]


# --- GPU busy: pool full -> degrade or wait or escalate, per policy -----------------------------

BUSY = [
    pytest.param(local(l4(), instance=pools(gpu_claimed=1, gpu_limit=1)),
                 "Dagster pool gpu-pool: 1/1 slots claimed, 0 pending", "cuda:0", id="dagster-pool-full"),
    pytest.param(cluster((1, 1), (2, 2)), "k8s node pool gpu: no node with 1 free GPU(s) (0/3 GPUs free)",
                 "k8s node pool gpu", id="k8s-nodes-full"),
    pytest.param(cluster((1, 0), instance=pools(gpu_claimed=2, gpu_limit=2)),
                 "Dagster pool gpu-pool: 2/2 slots claimed, 0 pending", "k8s node pool gpu",
                 id="k8s-free-but-pool-full"),
]


@pytest.mark.parametrize(("snapshot", "detail", "gpu_where"), BUSY)
def test_gpu_busy_degrades_to_cpu(snapshot, detail, gpu_where):
    decision = only(snapshot)
    assert (decision.target, decision.where, decision.fallback) == ("cpu", "cpu", "degrade_to_cpu")
    assert decision.settings == {"device": "cpu", "batch_size": 256}
    assert f"GPU busy ({detail}" in decision.reason
    assert "policy profiles.gpu-training.on_unavailable=degrade_to_cpu" in decision.reason
    assert decision.alternatives[0].target == "gpu" and detail in decision.alternatives[0].rejected
    assert decision.degraded and decision.effective_profile.gpus == 0


def test_degrading_on_a_full_dagster_pool_says_the_slot_is_still_claimed():
    decision = only(local(l4(), instance=pools(gpu_claimed=1)))
    assert decision.reason.endswith("the step still claims Dagster pool gpu-pool")


@pytest.mark.parametrize(("snapshot", "detail", "gpu_where"), BUSY)
def test_gpu_busy_waits(snapshot, detail, gpu_where):
    decision = only(snapshot, rules=policy("wait"))
    assert (decision.target, decision.where, decision.fallback) == ("gpu", gpu_where, "wait")
    assert decision.settings == {}
    assert decision.reason == (f"GPU busy ({detail}): waits by policy "
                               "profiles.gpu-training.on_unavailable=wait")


@pytest.mark.parametrize(("snapshot", "detail", "gpu_where"), BUSY)
def test_gpu_busy_escalates(snapshot, detail, gpu_where):
    with pytest.raises(PlacementError) as caught:
        only(snapshot, rules=policy("fail_and_escalate"))
    message = str(caught.value)
    assert "step model_torch: profile gpu-training needs 1 GPU(s)" in message
    assert detail in message
    assert "policy profiles.gpu-training.on_unavailable=fail_and_escalate" in message


def test_busy_local_device_memory():
    decision = only(local(l4(0, free_mb=1200)), rules=policy(min_free_gpu_memory_mb=4000))
    assert decision.target == "cpu"
    assert "1 of 1 CUDA device(s) on ws1 have < 4000 MiB free" in decision.reason


# --- no GPU at all -----------------------------------------------------------------------------

NO_GPU = [
    pytest.param(local(), "no CUDA device on host ws1 (torch 2.13.0+cpu has no CUDA build)", id="host"),
    pytest.param(cluster(), "k8s node pool gpu has no schedulable node", id="k8s"),
]


@pytest.mark.parametrize(("snapshot", "detail"), NO_GPU)
def test_no_gpu_degrades(snapshot, detail):
    decision = only(snapshot)
    assert (decision.target, decision.fallback) == ("cpu", "degrade_to_cpu")
    assert decision.reason.startswith(f"GPU absent ({detail}): degraded to cpu")


@pytest.mark.parametrize(("snapshot", "detail"), NO_GPU)
def test_no_gpu_with_wait_policy_is_rejected(snapshot, detail):
    with pytest.raises(PlacementError, match="waiting would never end") as caught:
        only(snapshot, rules=policy("wait"))
    assert detail in str(caught.value) and not caught.value.retryable


@pytest.mark.parametrize(("snapshot", "detail"), NO_GPU)
def test_no_gpu_with_escalation(snapshot, detail):
    with pytest.raises(PlacementError) as caught:
        only(snapshot, rules=policy("fail_and_escalate"))
    assert str(caught.value) == (
        f"cannot place 1 step(s):\n  - step model_torch: profile gpu-training needs 1 GPU(s) "
        f"but GPU absent ({detail}); policy profiles.gpu-training.on_unavailable="
        "fail_and_escalate: escalate")


def test_default_policy_degrades_gpu_training_without_gpu():
    decision = plan([TORCH], local(), DEFAULT_POLICY)["model_torch"]
    assert (decision.target, decision.fallback) == ("cpu", "degrade_to_cpu")
    assert decision.settings == {"device": "cpu"}


def test_scalable_node_pool_waits_for_the_autoscaler():
    rules = PlacementPolicy.model_validate(
        {**policy().model_dump(), "scalable_node_pools": {"gpu": {"gpus_per_node": 1}}})
    decision = only(cluster(), rules=rules)
    assert (decision.target, decision.fallback) == ("gpu", "wait")
    assert "the autoscaler can add a node to gpu (1 GPU(s) each)" in decision.reason


# --- accelerator type missing ------------------------------------------------------------------

@pytest.mark.parametrize(("snapshot", "detail"), [
    (local(l4()), "accelerator nvidia-a100-80gb not on host ws1 (has NVIDIA L4)"),
    (cluster((1, 0)), "accelerator nvidia-a100-80gb not in k8s node pool gpu (has nvidia-l4)"),
])
@pytest.mark.parametrize("rule", ["degrade_to_cpu", "fail_and_escalate"])
def test_missing_accelerator_follows_policy(snapshot, detail, rule):
    step = StepRequirement("finetune", A100_PROFILE)
    if rule == "fail_and_escalate":
        with pytest.raises(PlacementError, match="on_unavailable=fail_and_escalate") as caught:
            only(snapshot, step, policy(rule))
        assert detail in str(caught.value)
        return
    decision = only(snapshot, step, policy(rule))
    assert (decision.target, decision.fallback) == ("cpu", "degrade_to_cpu")
    assert detail in decision.reason


@pytest.mark.parametrize("snapshot", [local(l4()), cluster((1, 0))])
def test_matching_accelerator_runs_on_gpu(snapshot):
    assert only(snapshot, StepRequirement("finetune", L4_PROFILE)).target == "gpu"


# --- small input -------------------------------------------------------------------------------

@pytest.mark.parametrize(("rows", "target"), [(500, "cpu"), (9_999, "cpu"), (10_000, "gpu"), (None, "gpu")])
def test_small_input_goes_to_cpu(rows, target):
    step = StepRequirement("model_torch", GPU_TRAINING, input_rows=rows)
    decision = only(local(l4()), step, policy(small_input_rows=10_000))
    assert decision.target == target
    if target == "cpu":
        why = f"input {rows} rows < small_input_rows 10000: a GPU would be waste"
        assert (decision.reason, decision.fallback) == (why, "none")
        assert decision.settings == {"device": "cpu", "batch_size": 256}
        assert decision.alternatives[0].rejected == why


# --- impossible requirement --------------------------------------------------------------------

QUAD = ComputeProfile(name="gpu-quad", device="gpu", gpus=8)


def test_impossible_requirement_is_rejected_before_running():
    steps = [StepRequirement("sweep_a", QUAD), SKLEARN, StepRequirement("sweep_b", QUAD)]
    with pytest.raises(PlacementError) as caught:
        plan(steps, local(l4()), policy())
    message = str(caught.value)
    assert message.startswith("cannot place 2 step(s):")
    for key in ("sweep_a", "sweep_b"):
        assert (f"step {key}: profile gpu-quad asks 8 GPUs per step but the largest host/node in "
                "the snapshot has 1: impossible anywhere") in message


def test_without_any_gpu_the_policy_decides_not_impossibility():
    assert plan([StepRequirement("sweep", QUAD)], local(), policy())["sweep"].target == "cpu"


def test_impossible_on_the_fixture_cluster(node_list, pod_list):
    snapshot = CapacitySnapshot(host=host(), kubernetes=parse_k8s_capacity(node_list, pod_list))
    with pytest.raises(PlacementError, match="the largest host/node in the snapshot has 4"):
        plan([StepRequirement("sweep", QUAD)], snapshot, policy())
    # 2 GPUs: possible somewhere (gpu-big) but not in the GPU node pool -> policy applies
    two = StepRequirement("pair", ComputeProfile(name="gpu-training", device="gpu", gpus=2))
    decision = plan([two], snapshot, policy())["pair"]
    assert decision.target == "cpu"
    assert "no node in k8s node pool gpu has 2 GPU(s) (largest: 1)" in decision.reason
    assert plan([TORCH], snapshot, policy())["model_torch"].reason == (
        "GPU free: k8s node pool gpu: node gke-unified-ai-gpu-9c0d has 1/1 GPU(s) free")


# --- cpu profiles, rules, whole plans ----------------------------------------------------------

def test_cpu_profiles_and_their_pool():
    steps = [SKLEARN, StepRequirement("evaluation", CPU_LIGHT)]
    the_plan = plan(steps, local(instance=pools(cpu_claimed=1, cpu_limit=4)), policy())
    assert [(d.target, d.fallback) for d in the_plan] == [("cpu", "none"), ("cpu", "none")]
    assert the_plan["model_sklearn"].reason == (
        "cpu profile; Dagster pool cpu-pool: 1/4 slots claimed, 0 pending")
    full = local(instance=pools(cpu_claimed=4, cpu_limit=4))
    assert plan([SKLEARN], full, policy())["model_sklearn"].fallback == "wait"
    # Light steps have their own pool: a full training pool never holds them back.
    assert plan([StepRequirement("evaluation", CPU_LIGHT)], full, policy())["evaluation"].fallback == "none"
    light_full = local(instance=InstanceLoad(pools={"light-pool": PoolOccupancy("light-pool", 4, 4)}))
    with pytest.raises(PlacementError, match="profiles.cpu-light.on_unavailable=fail_and_escalate"):
        plan([StepRequirement("evaluation", CPU_LIGHT)], light_full, policy())


def test_unknown_profile_and_duplicate_steps():
    odd = StepRequirement("odd", ComputeProfile(name="gpu-mystery", device="gpu", gpus=1))
    with pytest.raises(PlacementError) as caught:
        plan([odd, SKLEARN, SKLEARN], local(), DEFAULT_POLICY)
    assert "step odd: no placement rule for profile 'gpu-mystery'" in str(caught.value)
    assert "step model_sklearn: listed twice" in str(caught.value)


def test_gpu_not_in_targets_runs_on_cpu():
    decision = only(local(l4()), rules=policy(targets=["cpu"]))
    assert decision.target == "cpu" and decision.fallback == "none"
    assert decision.reason == "policy profiles.gpu-training.targets=['cpu']: GPU not allowed"


def test_plan_counts():
    steps = [TORCH, SKLEARN, StepRequirement("tiny", GPU_TRAINING, input_rows=10)]
    counts = plan(steps, local(l4()), policy(small_input_rows=1000)).counts()
    assert counts == {"steps": 3, "gpu": 1, "cpu": 2, "degraded": 1, "wait": 0}


# --- re-validation when the step starts --------------------------------------------------------

@pytest.mark.parametrize(("rule", "outcome"), [
    ("degrade_to_cpu", "cpu"), ("wait", "retryable"), ("fail_and_escalate", "error")])
def test_revalidate_when_the_gpu_vanished(rule, outcome):
    planned = only(local(l4()), rules=policy(rule))
    assert planned.target == "gpu"
    gone = local()  # the fresh probe finds no CUDA device
    if outcome == "cpu":
        final = revalidate(planned, gone, policy(rule))
        assert (final.target, final.fallback, final.stage) == ("cpu", "degrade_to_cpu", "start")
        assert final.reason.startswith("at start: GPU absent (no CUDA device on host ws1")
        assert final.settings == {"device": "cpu", "batch_size": 256}
        return
    with pytest.raises(PlacementError) as caught:
        revalidate(planned, gone, policy(rule))
    assert caught.value.retryable == (outcome == "retryable")
    assert "at start: " in str(caught.value) and "step model_torch" in str(caught.value)


def test_revalidate_keeps_a_present_gpu_and_cpu_decisions():
    planned = only(local(l4(0), l4(1)))
    final = revalidate(planned, local(l4(1, free_mb=21000)), policy())
    assert (final.target, final.where, final.stage) == ("gpu", "cuda:1", "start")
    assert final.reason.endswith("at start: GPU present (cuda:1 on ws1 (NVIDIA L4 21000 MiB free))")
    cpu = only(local(), SKLEARN)
    assert revalidate(cpu, local(), policy()) == replace(cpu, stage="start")


def test_decide_at_start_reads_the_plan_from_run_tags():
    tags = plan_to_tags(plan([TORCH, SKLEARN], cluster((1, 0)), DEFAULT_POLICY))
    final = decide_at_start(tags, TORCH, snapshot=local())  # the pod has no CUDA after all
    assert (final.target, final.fallback, final.stage) == ("cpu", "degrade_to_cpu", "start")
    assert decide_at_start(tags, TORCH, snapshot=local(l4())).where == "cuda:0"
    # no plan in the tags (run launched without one): planned now, on this host
    assert decide_at_start({}, TORCH, snapshot=local(l4())).reason.startswith("GPU free: cuda:0")
