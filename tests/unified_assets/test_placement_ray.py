"""The Ray placement pieces without a cluster: the profile's Ray request, Ray capacity parsed
from the dashboard's records, the planner's Ray GPU check under each policy, the launch
decision read back inside a step, settings, and the KubeRay manifest's GPU fields. The real
cluster runs in tests/ray/test_ray_runtime.py."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from unified_assets.compute import (
    CPU_LIGHT,
    GPU_NODE_POOL,
    GPU_RESOURCE,
    GPU_TAINT_KEY,
    GPU_TRAINING,
    POOL_LABEL,
    RAY_CONFIG_TAG,
    ComputeProfile,
)
from unified_assets.placement import PlacementError, StepRequirement
from unified_assets.placement.planner import decide, decide_on_ray, ray_gpu_check
from unified_assets.placement.policy import PlacementPolicy, ProfileRule
from unified_assets.placement.ray_capacity import REQUEST_METADATA, parse_ray_capacity
from unified_assets.placement.ray_executor import dashboard_address, forwarded_env
from unified_assets.placement.ray_step import (
    ENV_DECISION,
    launch_decision,
    ray_evidence,
)
from unified_assets.placement.serialize import decision_to_tag_value
from unified_assets.placement.snapshot import CapacitySnapshot
from unified_assets.settings import load_settings

REPO = Path(__file__).resolve().parents[2]
HEAD = {"node_id": "head0000aaaa", "state": "ALIVE", "is_head_node": True,
        "labels": {}, "resources_total": {"CPU": 4.0}}
GPU_NODE = {"node_id": "gpu00000bbbb", "state": "ALIVE", "labels": {POOL_LABEL: GPU_NODE_POOL},
            "resources_total": {"CPU": 2.0, "GPU": 1.0, "accelerator_type:L4": 1.0}}
DEAD_GPU_NODE = {**GPU_NODE, "state": "DEAD"}


def gpu_job(status: str, node: str | None = "gpu00000bbbb") -> dict:
    return {"status": status, "driver_node_id": node,
            "metadata": {REQUEST_METADATA: json.dumps(GPU_TRAINING.ray_request())}}


def policy(on_unavailable: str) -> PlacementPolicy:
    targets = ("gpu", "cpu") if on_unavailable == "degrade_to_cpu" else ("gpu",)
    return PlacementPolicy(profiles={"gpu-training": ProfileRule(
        targets=targets, on_unavailable=on_unavailable, degraded_settings={"device": "cpu"})})


STEP = StepRequirement("model_torch", GPU_TRAINING)


def test_ray_request_comes_from_the_profile() -> None:
    gpu, cpu = GPU_TRAINING.ray_request(), CPU_LIGHT.ray_request()
    assert gpu == {"num_cpus": 2.0, "num_gpus": 1, "memory": 8 * 2**30, "resources": {},
                   "label_selector": {POOL_LABEL: GPU_NODE_POOL}}
    assert cpu["num_gpus"] == 0 and cpu["num_cpus"] == 0.5 and cpu["memory"] == 2**30
    assert cpu["label_selector"] == {POOL_LABEL: f"!{GPU_NODE_POOL}"}  # never on a GPU node
    assert GPU_TRAINING.as_cpu().ray_request()["num_gpus"] == 0  # a degraded step asks none
    l4 = ComputeProfile("gpu-l4", "gpu", gpus=1, accelerator="L4")
    assert l4.ray_request()["resources"] == {"accelerator_type:L4": 0.001}
    tag = json.loads(GPU_TRAINING.op_tags()[RAY_CONFIG_TAG])  # dagster-ray's own tag
    assert tag == {"num_cpus": 2.0, "num_gpus": 1, "memory": 8 * 2**30, "resources": {}}


def test_ray_capacity_counts_our_running_jobs_and_the_queue() -> None:
    cap = parse_ray_capacity([HEAD, GPU_NODE], [gpu_job("RUNNING"), gpu_job("PENDING", None),
                                               gpu_job("SUCCEEDED")])
    gpu = cap.node("gpu00000bbbb")
    assert gpu is not None and gpu.pool == GPU_NODE_POOL and gpu.accelerator == "L4"
    assert (gpu.gpus_free, gpu.cpus_free) == (0.0, 0.0)
    assert cap.pending_jobs == 1 and cap.pending_gpus == 1
    assert cap.pools()[GPU_NODE_POOL]["gpus_total"] == 1
    summary = CapacitySnapshot(ray=cap).summary()
    assert "ray: 2 live node(s)" in summary and "1 pending job(s)" in summary
    dead = parse_ray_capacity([HEAD, DEAD_GPU_NODE])
    assert GPU_NODE_POOL not in dead.pools() and not dead.node("gpu00000bbbb").alive


def test_ray_gpu_check_free_busy_and_gone() -> None:
    assert ray_gpu_check(GPU_TRAINING, parse_ray_capacity([HEAD, GPU_NODE])).status == "free"
    busy = ray_gpu_check(GPU_TRAINING, parse_ray_capacity([HEAD, GPU_NODE], [gpu_job("RUNNING")]))
    assert busy.status == "busy" and busy.queueable
    queued = ray_gpu_check(GPU_TRAINING, parse_ray_capacity([HEAD, GPU_NODE],
                                                           [gpu_job("PENDING", None)]))
    assert queued.status == "busy"  # a job already waits for the only GPU
    gone = ray_gpu_check(GPU_TRAINING, parse_ray_capacity([HEAD, DEAD_GPU_NODE]))
    assert gone.status == "absent" and gone.queueable and "gpu00000 dead" in gone.detail
    a100 = ComputeProfile("gpu-a100", "gpu", gpus=1, accelerator="A100")
    assert "not in ray pool gpu" in ray_gpu_check(a100, parse_ray_capacity([GPU_NODE])).detail


def test_gpu_node_gone_each_policy() -> None:
    snapshot = CapacitySnapshot(ray=parse_ray_capacity([HEAD, DEAD_GPU_NODE]))
    degraded = decide(STEP, snapshot, policy("degrade_to_cpu"))
    assert degraded.degraded and degraded.settings == {"device": "cpu"}
    assert degraded.effective_profile.ray_request()["num_gpus"] == 0
    waits = decide(STEP, snapshot, policy("wait"))
    assert (waits.target, waits.fallback, waits.where) == ("gpu", "wait", "ray pool gpu")
    assert "queued on the pool" in waits.reason
    with pytest.raises(PlacementError, match="fail_and_escalate: escalate"):
        decide(STEP, snapshot, policy("fail_and_escalate"))


def test_a_planned_gpu_placement_is_rechecked_at_launch() -> None:
    planned = decide(STEP, CapacitySnapshot(ray=parse_ray_capacity([HEAD, GPU_NODE])),
                     policy("degrade_to_cpu"))
    assert planned.target == "gpu"
    gone = parse_ray_capacity([HEAD, DEAD_GPU_NODE])
    at_launch = decide_on_ray(STEP, planned, gone, policy("degrade_to_cpu"), note="node lost")
    assert at_launch.degraded and at_launch.reason.startswith("node lost; at launch: GPU absent")
    with pytest.raises(PlacementError, match="at launch"):
        decide_on_ray(STEP, planned, gone, policy("fail_and_escalate"))
    kept = decide_on_ray(STEP, planned, parse_ray_capacity([HEAD, GPU_NODE]),
                         policy("degrade_to_cpu"))
    assert kept.target == "gpu" and "at launch: GPU free" in kept.reason


def test_the_step_takes_its_launch_decision_and_checks_the_gpu_ray_gave() -> None:
    decision = decide(STEP, CapacitySnapshot(ray=parse_ray_capacity([HEAD, GPU_NODE])),
                      policy("wait"))
    env = {ENV_DECISION: decision_to_tag_value(decision), "CUDA_VISIBLE_DEVICES": "0"}
    final = launch_decision(STEP, env)
    assert final is not None and final.stage == "start" and "Ray gave GPU ids 0" in final.reason
    with pytest.raises(PlacementError, match="Ray gave GPU ids none") as refused:
        launch_decision(STEP, {**env, "CUDA_VISIBLE_DEVICES": ""})
    assert refused.value.retryable
    assert launch_decision(STEP, {}) is None  # not on Ray: the host path decides
    assert ray_evidence({}) == {}


def test_settings_and_addresses() -> None:
    settings = load_settings({"UNIFIED_AI_DEPLOYMENT": "ray", "RAY_ADDRESS": "http://h:8265/"})
    assert settings.deployment == "ray" and settings.ray_address == "http://h:8265/"
    assert dashboard_address("http://h:8265/") == "http://h:8265"
    assert dashboard_address("10.0.0.5:6379") == "http://10.0.0.5:8265"  # Ray's own RAY_ADDRESS
    assert dashboard_address(None) == "http://127.0.0.1:8265"
    secrets = {"AWS_SECRET_ACCESS_KEY": "s", "UNIFIED_AI_DECISIONS_URL": "postgresql://u:pw@h/d",
               "UNIFIED_AI_LEDGER_KEY": "k", "UNIFIED_AI_SIGNING_KEY": "/keys/ops.key",
               "UNIFIED_AI_ESCALATION_WEBHOOK": "https://hooks.example/T0K3N",
               "UNIFIED_AI_SOMETHING_NEW": "x", "DAGSTER_PG_PASSWORD": "pw"}
    env = forwarded_env({"UNIFIED_AI_HOME": "/h", "DAGSTER_HOME": "/d", "UNIFIED_AI_POLICY": "/p",
                         "UNIFIED_AI_DEPLOYMENT": "kubernetes", "UNIFIED_AI_EXECUTOR": "ray",
                         **secrets})
    assert env["UNIFIED_AI_HOME"] == "/h" and env["DAGSTER_HOME"] == "/d"
    assert (env["UNIFIED_AI_POLICY"], env["UNIFIED_AI_EXECUTOR"]) == ("/p", "ray")
    # Secrets never travel in a Ray job's runtime_env (Ray's job records show it); names not
    # known to be settings neither: forwarding is by name, not by prefix.
    assert not set(secrets) & set(env) and env["PATH"].endswith(":${PATH}")


def test_kubernetes_resources_with_steps_as_ray_jobs(tmp_path) -> None:
    """KubeRay: the kubernetes settings path (S3 IO, Postgres decision store, signed policy)
    with every step a Ray job on RAY_ADDRESS."""
    from dagster_aws.s3 import S3PickleIOManager

    from tests.policies import write_policy
    from unified_assets.definitions import build_definitions
    from unified_assets.services.identity import new_key_pair

    keys = {person: new_key_pair()[1] for person in ("alice", "bob", "risk-officer", "ops")}
    policy = write_policy(tmp_path, {"approval": {"require_signature": True, "keys": keys}})
    settings = load_settings({"UNIFIED_AI_DEPLOYMENT": "kubernetes", "UNIFIED_AI_EXECUTOR": "ray",
                              "RAY_ADDRESS": "http://head-svc:8265", "UNIFIED_AI_HOME": str(tmp_path),
                              "UNIFIED_AI_POLICY": str(policy)})
    assert (settings.deployment, settings.executor) == ("kubernetes", "ray")
    defs = build_definitions(settings)
    assert defs.executor.name == "ray" and settings.ray_address == "http://head-svc:8265"
    assert isinstance(defs.resources["io_manager"], S3PickleIOManager)


def test_importing_the_ray_executor_loads_no_ray() -> None:
    code = ("import sys, unified_assets.placement.ray_executor, unified_assets.placement.ray_step;"
            "print([m for m in sys.modules if m == 'ray' or m.startswith(('ray.', 'dagster_ray'))])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_kuberay_manifest_gpu_group_matches_the_profiles() -> None:
    cluster = yaml.safe_load((REPO / "deploy/ray/raycluster.yaml").read_text())
    assert cluster["kind"] == "RayCluster" and cluster["apiVersion"] == "ray.io/v1"
    head = cluster["spec"]["headGroupSpec"]
    assert head["rayStartParams"]["num-gpus"] == "0"
    assert GPU_RESOURCE not in str(head["template"]["spec"]["containers"][0]["resources"])
    (gpu,) = [g for g in cluster["spec"]["workerGroupSpecs"] if g["groupName"] == GPU_NODE_POOL]
    pod = gpu["template"]["spec"]
    assert pod["nodeSelector"] == {POOL_LABEL: GPU_NODE_POOL}
    assert {"key": GPU_TAINT_KEY, "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    limits = pod["containers"][0]["resources"]["limits"]
    assert int(limits[GPU_RESOURCE]) == int(gpu["rayStartParams"]["num-gpus"]) >= GPU_TRAINING.gpus
    assert gpu["rayStartParams"]["labels"] == f"{POOL_LABEL}={GPU_NODE_POOL}"
    # the same selector and toleration the profile gives a Kubernetes step pod
    k8s = GPU_TRAINING.k8s_config()["pod_spec_config"]
    assert k8s["node_selector"] == pod["nodeSelector"]
    assert k8s["tolerations"][0] in pod["tolerations"]
    # Every node runs steps of the kubernetes settings path: the same settings, Secrets from
    # the node's environment (never forwarded through a Ray job), the instance's dagster.yaml.
    for spec in (head["template"]["spec"], pod):
        (container,) = spec["containers"]
        env = {e["name"]: e.get("value") for e in container["env"]}
        assert env["UNIFIED_AI_DEPLOYMENT"] == "kubernetes" and env["UNIFIED_AI_EXECUTOR"] == "ray"
        secrets = {s["secretRef"]["name"] for s in container["envFrom"] if "secretRef" in s}
        assert {"unified-ai-aws", "unified-ai-decisions"} <= secrets
        (mount,) = container["volumeMounts"]
        assert mount["mountPath"] == f"{env['DAGSTER_HOME']}/dagster.yaml"
        assert {"name": mount["name"], "configMap": {"name": "dagster-instance"}} in spec["volumes"]


def test_on_oom_profile_must_name_a_larger_profile_of_the_policy() -> None:
    rule = ProfileRule(targets=("cpu",), on_unavailable="wait", on_oom_profile="cpu-training")
    with pytest.raises(ValueError, match="on_oom_profile='cpu-training' is not a profile"):
        PlacementPolicy(profiles={"cpu-light": rule})
    with pytest.raises(ValueError, match="names the profile itself"):
        PlacementPolicy(profiles={"cpu-training": rule})
    PlacementPolicy(profiles={"cpu-light": rule, "cpu-training": ProfileRule(targets=("cpu",))})


def test_out_of_memory_is_recognised_and_only_ends_the_process_on_ray() -> None:
    from unified_assets.placement.ray_step import exit_on_oom, is_out_of_memory

    class OutOfMemoryError(RuntimeError):  # torch.cuda.OutOfMemoryError's name
        pass

    assert is_out_of_memory(MemoryError()) and is_out_of_memory(OutOfMemoryError("CUDA"))
    assert not is_out_of_memory(ValueError("no"))
    with pytest.raises(MemoryError), exit_on_oom():  # not on Ray: the error propagates
        raise MemoryError("host")


def test_a_kill_is_out_of_memory_only_on_ray_s_word_not_any_mention_of_memory() -> None:
    """A step killed (137) whose job message merely mentions memory (a shared-memory path in
    the last log lines) may still be its node going away: it waits for Ray to settle; Ray
    naming memory exhaustion, or the step's own out-of-memory exit, does not."""
    from types import SimpleNamespace

    from unified_assets.placement.ray_executor import _handler_class
    from unified_assets.placement.ray_step import OOM_EXIT_CODE

    handler_class = _handler_class()
    handler = handler_class.__new__(handler_class)
    handler.kills_seen = {}

    def job(code: int, message: str, error_type: str | None = None) -> SimpleNamespace:
        return SimpleNamespace(submission_id=f"j-{code}-{message}", driver_exit_code=code,
                               message=message, error_type=error_type)

    mentions = job(137, "Job entrypoint command failed with exit code 137, last available "
                        "logs: wrote /dev/shm/torch_memory_pool")
    assert handler.unsettled_kill(mentions) and handler.out_of_memory(mentions)
    assert not handler.unsettled_kill(job(137, "Task was killed due to the node running "
                                               "low on memory. out of memory"))
    assert not handler.unsettled_kill(job(-9, "", "OutOfMemoryError"))
    assert not handler.unsettled_kill(job(OOM_EXIT_CODE, "exit code 75"))
