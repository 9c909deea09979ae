"""Kubernetes side of a plan: the `per_step_k8s_config` run config that re-points degraded GPU
steps to plain CPU pods, a `k8s_job_executor` that accepts it, and the Job manifest
dagster-k8s would create for each step, built with dagster-k8s's own functions
(`get_user_defined_k8s_config`, `K8sContainerContext.merge`, `construct_dagster_k8s_job`)
in the same order as its `K8sStepHandler`."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from unified_assets.placement.decision import Decision, Plan

DEFAULT_RUN_ID = "00000000-0000-0000-0000-000000000000"
STEP_ARGS = ("dagster", "api", "execute_step")  # the real args carry the serialized step


def per_step_k8s_config(plan: Plan) -> dict[str, dict[str, Any]]:
    """`per_step_k8s_config` for `k8s_job_executor`, keyed by op name, for the steps whose pod
    differs from their tags: GPU profiles placed on CPU get the CPU twin's resources and no
    GPU node selector or toleration (SHALLOW merge replaces those keys of the tag config)."""
    out: dict[str, dict[str, Any]] = {}
    for decision in plan:
        if decision.degraded:
            resources = decision.effective_profile.k8s_config()["container_config"]["resources"]
            out[decision.requirement.op] = {
                "container_config": {"resources": resources},
                "pod_spec_config": {"tolerations": [], "node_selector": {}},
                "merge_behavior": "SHALLOW",
            }
    return out


def plan_run_config(plan: Plan) -> dict[str, Any]:
    """Run config fragment to merge into a run launched with this plan."""
    return {"execution": {"config": {"per_step_k8s_config": per_step_k8s_config(plan)}}}


def k8s_executor_with_placement(**fixed_config: Any):
    """`k8s_job_executor` with `fixed_config` (e.g. max_concurrent=8) that still takes
    `per_step_k8s_config` from run config; `k8s_job_executor.configured({...})` would not."""
    from dagster import Field, Map, Permissive
    from dagster_k8s import k8s_job_executor

    # Permissive here: the executor's own schema validates the value after the mapping (a
    # typed schema here would turn merge_behavior into an enum the inner schema refuses).
    schema = {"per_step_k8s_config": Field(Map(str, Permissive(), key_label_name="op_name"),
                                           is_required=False, default_value={})}
    return k8s_job_executor.configured(lambda run_config: {**fixed_config, **run_config},
                                       name="k8s", config_schema=schema)


@dataclass(frozen=True)
class K8sTarget:
    """What the K8sRunLauncher supplies to step jobs. Defaults follow deploy/dagster.yaml;
    `container_context` takes its container-context keys (env_config_maps, env_secrets,
    volumes, volume_mounts, service_account_name, ...)."""

    image: str
    namespace: str = "unified-ai"
    job_name: str = "train_evaluate_promote"
    code_location: str | None = "unified_ai"
    run_id: str = DEFAULT_RUN_ID
    dagster_home: str | None = "/opt/dagster/dagster_home"
    instance_config_map: str | None = "dagster-instance"
    postgres_password_secret: str | None = "dagster-postgresql-secret"
    container_context: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_launcher_config(cls, launcher_config: Mapping[str, Any], image: str,
                             **overrides: Any) -> K8sTarget:
        """From a K8sRunLauncher `config:` block (e.g. deploy/dagster.yaml's run_launcher)."""
        from dagster_k8s.job import DagsterK8sJobConfig

        allowed = set(DagsterK8sJobConfig.config_type_container_context())
        context = {k: v for k, v in launcher_config.items() if k in allowed}
        values: dict[str, Any] = {"image": image, "container_context": context}
        if launcher_config.get("job_namespace"):
            values["namespace"] = launcher_config["job_namespace"]
        for key in ("dagster_home", "instance_config_map", "postgres_password_secret"):
            if key in launcher_config:
                values[key] = launcher_config[key]
        return cls(**{**values, **overrides})


def step_tags_for(decision: Decision) -> dict[str, str]:
    """The step's tags as Dagster stores them (non-string values JSON-encoded)."""
    from dagster._utils.tags import normalize_tags

    return dict(normalize_tags(decision.profile.op_tags()))


def step_job_manifest(step_key: str, step_tags: Mapping[str, str], target: K8sTarget, *,
                      op_name: str | None = None,
                      per_step: Mapping[str, Mapping[str, Any]] | None = None) -> dict[str, Any]:
    """The batch/v1 Job dagster-k8s's step handler would create for `step_key`, as a dict."""
    from dagster_k8s.container_context import K8sContainerContext
    from dagster_k8s.job import (
        UserDefinedDagsterK8sConfig,
        construct_dagster_k8s_job,
        get_k8s_job_name,
        get_user_defined_k8s_config,
    )

    context = K8sContainerContext.create_from_config({"k8s": dict(target.container_context)})
    context = context.merge(K8sContainerContext(run_k8s_config=get_user_defined_k8s_config(step_tags)))
    override = (per_step or {}).get(op_name or step_key)
    if override:
        context = context.merge(K8sContainerContext(
            run_k8s_config=UserDefinedDagsterK8sConfig.from_dict(override)))
    launcher = SimpleNamespace(job_image=target.image, dagster_home=target.dagster_home,
                               instance_config_map=target.instance_config_map,
                               postgres_password_secret=target.postgres_password_secret)
    name = f"dagster-step-{get_k8s_job_name(target.run_id, step_key)}"
    job = construct_dagster_k8s_job(
        job_config=context.get_k8s_job_config(target.image, launcher),
        args=list(STEP_ARGS), job_name=name, pod_name=name, component="step_worker",
        user_defined_k8s_config=context.run_k8s_config,
        labels={"dagster/job": target.job_name, "dagster/op": step_key, "dagster/run-id": target.run_id,
                **({"dagster/code-location": target.code_location} if target.code_location else {})},
        env_vars=[{"name": "DAGSTER_RUN_JOB_NAME", "value": target.job_name},
                  {"name": "DAGSTER_RUN_STEP_KEY", "value": step_key}],
    )
    manifest = _api_client().sanitize_for_serialization(job)
    manifest["metadata"]["namespace"] = context.namespace or target.namespace
    return manifest


def job_manifests(plan: Plan, target: K8sTarget,
                  step_tags: Mapping[str, Mapping[str, str]] | None = None) -> dict[str, dict]:
    """One Job manifest per planned step, with the plan's `per_step_k8s_config` applied.
    `step_tags` (by step key) defaults to each profile's tags."""
    per_step = per_step_k8s_config(plan)
    return {d.step_key: step_job_manifest(
                d.step_key, (step_tags or {}).get(d.step_key) or step_tags_for(d), target,
                op_name=d.requirement.op, per_step=per_step)
            for d in plan}


def write_manifests(manifests: Mapping[str, Mapping[str, Any]], out_dir: str | Path) -> list[Path]:
    """One YAML file per step, named by the step (`model_torch.yaml`; the Job's own name, a
    hash as dagster-k8s makes it, is inside), the step key in a comment."""
    import re

    import yaml

    folder = Path(out_dir)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for step_key, manifest in manifests.items():
        path = folder / f"{re.sub(r'[^A-Za-z0-9_.-]+', '_', step_key)}.yaml"
        path.write_text(f"# step: {step_key}\n" + yaml.safe_dump(dict(manifest), sort_keys=False))
        written.append(path)
    return written


_CLIENT: Any = None


def _api_client():
    global _CLIENT
    if _CLIENT is None:
        import kubernetes

        _CLIENT = kubernetes.client.ApiClient()
    return _CLIENT

