"""Step Job manifests built by dagster-k8s's own construction from the profiles' tags and a
plan's `per_step_k8s_config`, validated against the Kubernetes schemas (kubernetes-validate
ships them: no cluster, no network)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import dagster as dg
import dagster_k8s.executor
import kubernetes
import kubernetes_validate
import pytest
import yaml
from dagster_k8s import K8sRunLauncher, k8s_job_executor
from dagster_k8s.container_context import K8sContainerContext
from dagster_k8s.executor import K8sStepHandler

from tests.unified_assets.placement.helpers import cluster, pools
from unified_assets.compute import CPU_LIGHT, CPU_TRAINING, GPU_TRAINING, ComputeProfile
from unified_assets.placement import DEFAULT_POLICY, StepRequirement, plan
from unified_assets.placement.manifests import (
    STEP_ARGS,
    K8sTarget,
    job_manifests,
    k8s_executor_with_placement,
    per_step_k8s_config,
    plan_run_config,
    step_tags_for,
    write_manifests,
)

ROOT = Path(__file__).resolve().parents[3]
IMAGE = "registry.example.com/unified-ai:4f2a9c1-cuda"
QUAD = ComputeProfile(name="gpu-quad", device="gpu", cpu="8", memory="32Gi", gpus=4,
                      accelerator="nvidia-a100-80gb")
POLICY = DEFAULT_POLICY.model_validate(
    {"profiles": {**DEFAULT_POLICY.model_dump()["profiles"], "gpu-quad": {"on_unavailable": "wait"}}})
STEPS = [
    StepRequirement("landed_batch", CPU_LIGHT),
    StepRequirement("model_sklearn", CPU_TRAINING, input_rows=50_000),
    StepRequirement("model_torch", GPU_TRAINING, input_rows=50_000),
    StepRequirement("tiny_torch", GPU_TRAINING, input_rows=200),  # small input -> cpu
    StepRequirement("finetune", QUAD),
]
SNAPSHOTS = {
    "gpu-free": cluster((4, 0), accelerator="nvidia-a100-80gb"),
    "gpu-busy": cluster((4, 4), accelerator="nvidia-a100-80gb", instance=pools()),
}
K8S_VERSIONS = ["1.29", "1.33", "1.37"]


def gpu_requests(manifest: dict) -> tuple[str | None, str | None]:
    container = manifest["spec"]["template"]["spec"]["containers"][0]
    resources = container.get("resources") or {}
    return ((resources.get("requests") or {}).get("nvidia.com/gpu"),
            (resources.get("limits") or {}).get("nvidia.com/gpu"))


def tolerates_gpu_taint(manifest: dict) -> bool:
    tolerations = manifest["spec"]["template"]["spec"].get("tolerations") or []
    return any(t.get("key") == "nvidia.com/gpu" and t.get("operator") == "Exists"
               and t.get("effect") == "NoSchedule" for t in tolerations)


@pytest.fixture(params=list(SNAPSHOTS))
def planned(request):
    the_plan = plan(STEPS, SNAPSHOTS[request.param], POLICY)
    return the_plan, job_manifests(the_plan, K8sTarget(image=IMAGE))


def test_gpu_steps_request_their_gpus_and_cpu_steps_none(planned):
    the_plan, manifests = planned
    assert set(manifests) == {s.step_key for s in STEPS}
    for decision in the_plan:
        manifest = manifests[decision.step_key]
        selector = manifest["spec"]["template"]["spec"].get("nodeSelector") or {}
        if decision.target == "gpu":
            gpus = str(decision.profile.gpus)
            assert gpu_requests(manifest) == (None, gpus), decision.step_key  # limit => request
            assert tolerates_gpu_taint(manifest), decision.step_key
            assert selector.get("unified-ai/pool") == "gpu"
        else:
            assert gpu_requests(manifest) == (None, None), decision.step_key
            assert not tolerates_gpu_taint(manifest), decision.step_key
            assert "unified-ai/pool" not in selector


def test_busy_cluster_degrades_torch_and_quad_waits():
    the_plan = plan(STEPS, SNAPSHOTS["gpu-busy"], POLICY)
    assert [(d.step_key, d.target, d.fallback) for d in the_plan] == [
        ("landed_batch", "cpu", "none"), ("model_sklearn", "cpu", "none"),
        ("model_torch", "cpu", "degrade_to_cpu"), ("tiny_torch", "cpu", "none"),
        ("finetune", "gpu", "wait"),
    ]
    manifests = job_manifests(the_plan, K8sTarget(image=IMAGE))
    torch = manifests["model_torch"]["spec"]["template"]["spec"]["containers"][0]["resources"]
    assert torch == {"limits": {"memory": "8Gi"}, "requests": {"cpu": "2", "memory": "8Gi"}}
    assert gpu_requests(manifests["finetune"]) == (None, "4")


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_manifests_validate_against_kubernetes_schemas(planned, version):
    _, manifests = planned
    for step_key, manifest in manifests.items():
        assert kubernetes_validate.validate(manifest, version, strict=True) == version, step_key


def test_schema_validation_can_fail():
    the_plan = plan(STEPS[:1], SNAPSHOTS["gpu-free"], POLICY)
    manifest = job_manifests(the_plan, K8sTarget(image=IMAGE))["landed_batch"]
    manifest["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"] = {"cpu": ["2"]}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(manifest, "1.33", strict=True)


def test_manifest_is_what_the_step_handler_builds():
    the_plan = plan(STEPS[2:3], SNAPSHOTS["gpu-free"], POLICY)
    manifest = job_manifests(the_plan, K8sTarget(image=IMAGE, run_id="run-1"))["model_torch"]
    assert (manifest["apiVersion"], manifest["kind"]) == ("batch/v1", "Job")
    assert manifest["metadata"]["name"].startswith("dagster-step-")
    assert manifest["metadata"]["namespace"] == "unified-ai"
    assert manifest["metadata"]["labels"]["app.kubernetes.io/component"] == "step_worker"
    pod = manifest["spec"]["template"]
    assert pod["metadata"]["labels"]["dagster/op"] == "model_torch"
    assert pod["metadata"]["labels"]["dagster/run-id"] == "run-1"
    container = pod["spec"]["containers"][0]
    assert (container["name"], container["image"]) == ("dagster", IMAGE)
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["DAGSTER_RUN_STEP_KEY"] == "model_torch"
    assert env["DAGSTER_HOME"] == "/opt/dagster/dagster_home"
    assert pod["spec"]["restartPolicy"] == "Never"


def test_launcher_config_reaches_the_pods():
    launcher = yaml.safe_load((ROOT / "deploy" / "dagster.yaml").read_text())["run_launcher"]["config"]
    target = K8sTarget.from_launcher_config(launcher, image=IMAGE)
    manifest = job_manifests(plan(STEPS[2:3], SNAPSHOTS["gpu-free"], POLICY), target)["model_torch"]
    spec = manifest["spec"]["template"]["spec"]
    assert manifest["metadata"]["namespace"] == launcher["job_namespace"]
    assert spec["serviceAccountName"] == launcher["service_account_name"]
    env_from = spec["containers"][0]["envFrom"]
    assert [e["configMapRef"]["name"] for e in env_from if "configMapRef" in e] == launcher["env_config_maps"]
    assert [e["secretRef"]["name"] for e in env_from if "secretRef" in e] == launcher["env_secrets"]
    assert {v["name"] for v in spec["volumes"]} >= {v["name"] for v in launcher["volumes"]}
    assert gpu_requests(manifest) == (None, "1") and tolerates_gpu_taint(manifest)
    assert kubernetes_validate.validate(manifest, "1.33", strict=True)


def test_per_step_config_only_for_degraded_steps():
    the_plan = plan(STEPS, SNAPSHOTS["gpu-busy"], POLICY)
    config = per_step_k8s_config(the_plan)
    assert set(config) == {"model_torch", "tiny_torch"}
    assert config["model_torch"] == {
        "container_config": {"resources": {"requests": {"cpu": "2", "memory": "8Gi"},
                                           "limits": {"memory": "8Gi"}}},
        "pod_spec_config": {"tolerations": [], "node_selector": {}},
        "merge_behavior": "SHALLOW",
    }
    assert plan_run_config(the_plan) == {"execution": {"config": {"per_step_k8s_config": config}}}


def test_per_step_config_is_keyed_by_op_name():
    step = StepRequirement("models__torch", GPU_TRAINING, input_rows=5, op_name="models__torch_op")
    assert set(per_step_k8s_config(plan([step], SNAPSHOTS["gpu-free"], POLICY))) == {"models__torch_op"}


def _job(executor):
    @dg.op
    def noop() -> None: ...

    @dg.job(executor_def=executor)
    def placed():
        noop()

    return placed


def test_executor_accepts_the_plans_run_config():
    run_config = plan_run_config(plan(STEPS, SNAPSHOTS["gpu-busy"], POLICY))
    job = _job(k8s_executor_with_placement(max_concurrent=8))
    resolved = dg.validate_run_config(job, run_config)["execution"]["k8s"]
    assert resolved["max_concurrent"] == 8
    assert set(resolved["per_step_k8s_config"]) == {"model_torch", "tiny_torch"}
    assert resolved["per_step_k8s_config"]["model_torch"]["merge_behavior"].value == "SHALLOW"
    assert dg.validate_run_config(job, {})["execution"]["k8s"]["per_step_k8s_config"] == {}
    bad = {"execution": {"config": {"per_step_k8s_config": {"x": {"merge_behavior": "WIDE"}}}}}
    with pytest.raises(dg.DagsterInvalidConfigError, match="merge_behavior"):
        dg.validate_run_config(job, bad)
    # the plain `.configured({...})` the definitions use today silently drops it
    plain = _job(k8s_job_executor.configured({"max_concurrent": 8}))
    assert dg.validate_run_config(plain, run_config)["execution"]["k8s"]["per_step_k8s_config"] == {}


def test_write_manifests(tmp_path, planned):
    _, manifests = planned
    paths = write_manifests(manifests, tmp_path / "out")
    assert len(paths) == len(manifests)
    loaded = {yaml.safe_load(p.read_text())["metadata"]["name"]: p for p in paths}
    assert set(loaded) == {m["metadata"]["name"] for m in manifests.values()}
    assert paths[0].read_text().startswith("# step: ")


KUBECONFIG = """apiVersion: v1
kind: Config
clusters: [{name: c, cluster: {server: "https://127.0.0.1:6443"}}]
users: [{name: u, user: {token: not-a-secret}}]
contexts: [{name: x, context: {cluster: c, user: u}}]
current-context: x
"""


@pytest.mark.parametrize("snapshot", list(SNAPSHOTS))
def test_same_job_as_dagster_k8s_step_handler(tmp_path, monkeypatch, snapshot):
    """Drive dagster-k8s's own K8sStepHandler.launch_step (fake API, real launcher from
    deploy/dagster.yaml) and compare the Job it submits with ours, per step."""
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(KUBECONFIG)
    launcher_config = yaml.safe_load((ROOT / "deploy" / "dagster.yaml").read_text())["run_launcher"]["config"]
    launcher = K8sRunLauncher(**{**launcher_config, "load_incluster_config": False,
                                 "kubeconfig_file": str(kubeconfig)})
    the_plan = plan(STEPS, SNAPSHOTS[snapshot], POLICY)
    submitted = []
    batch_api = SimpleNamespace(create_namespaced_job=lambda body, namespace, **_: submitted.append(
        (body, namespace)))
    handler = K8sStepHandler(image=None, container_context=K8sContainerContext(),
                             load_incluster_config=False, kubeconfig_file=str(kubeconfig),
                             k8s_client_batch_api=batch_api, k8s_client_core_api=object(),
                             per_step_k8s_config=per_step_k8s_config(the_plan))
    monkeypatch.setattr(dagster_k8s.executor, "DagsterEvent",
                        SimpleNamespace(step_worker_starting=lambda *a, **k: None))
    target = K8sTarget.from_launcher_config(launcher_config, IMAGE, run_id="run-7", code_location=None)
    ours = job_manifests(the_plan, target)
    api = kubernetes.client.ApiClient()
    for decision in the_plan:
        key = decision.step_key
        context = SimpleNamespace(
            execute_step_args=SimpleNamespace(
                step_keys_to_execute=[key], run_id="run-7", known_state=None,
                get_command_args=lambda **_: list(STEP_ARGS), get_command_env=lambda: [],
                job_origin=SimpleNamespace(repository_origin=SimpleNamespace(container_image=IMAGE))),
            step_tags={key: step_tags_for(decision)},
            get_step_context=lambda k: SimpleNamespace(step=SimpleNamespace(op_name=k)),
            dagster_run=SimpleNamespace(job_name=target.job_name, remote_job_origin=None,
                                        job_code_origin=None, tags={}),
            instance=SimpleNamespace(run_launcher=launcher),
        )
        list(handler.launch_step(context))
        body, namespace = submitted.pop()
        mine = dict(ours[key])
        mine["metadata"] = {k: v for k, v in mine["metadata"].items() if k != "namespace"}
        assert api.sanitize_for_serialization(body) == mine, key
        assert namespace == ours[key]["metadata"]["namespace"] == "unified-ai"
