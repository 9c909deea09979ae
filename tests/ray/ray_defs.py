"""Tiny assets with the real compute profiles, run by the placed Ray executor: what the Ray
tests and bench/ray_runtime.py launch. Each step records its placement (`placement_metadata`:
the decision, the Ray node, pool and GPU ids) and reads nothing heavy, so a Ray job costs
what Dagster's step process costs. Jobs are module-level functions so `reconstructable`
finds them from the Ray job's step process (PYTHONPATH is the repo root)."""

import os
import time

import dagster as dg

from unified_assets.compute import CPU_LIGHT, CPU_TRAINING, GPU_TRAINING, ComputeProfile
from unified_assets.metadata import placement_metadata
from unified_assets.placement.policy import PlacementPolicy, ProfileRule
from unified_assets.placement.ray_executor import ray_executor_def
from unified_assets.placement.ray_step import enforce_memory_request, exit_on_oom

POLICY_ENV = "UNIFIED_AI_TEST_RAY_POLICY"  # the on_unavailable a step records under
HOLD_ENV = "UNIFIED_AI_TEST_GPU_HOLD_S"  # how long a GPU step holds its GPU (node-loss test)
POLICIES = ("degrade_to_cpu", "wait", "fail_and_escalate")
# More than cpu-light's 1Gi, well within cpu-training's 4Gi; calloc'd, so never touched.
HUNGRY_BYTES = 3 * 2**29


def policy_for(on_unavailable: str) -> PlacementPolicy:
    targets = ("gpu",) if on_unavailable != "degrade_to_cpu" else ("gpu", "cpu")
    return PlacementPolicy(profiles={
        "cpu-light": ProfileRule(targets=("cpu",), on_unavailable="wait",
                                 on_oom_profile=CPU_TRAINING.name),
        "cpu-training": ProfileRule(targets=("cpu",), on_unavailable="wait"),
        "gpu-training": ProfileRule(targets=targets, on_unavailable=on_unavailable,
                                    degraded_settings={"device": "cpu"}),
    })


def _evidence(context: dg.AssetExecutionContext, profile: ComputeProfile) -> dict[str, str]:
    meta = placement_metadata(context, profile, policy_for(os.environ.get(POLICY_ENV, "wait")))
    meta["step_pid"] = str(os.getpid())
    return meta


@dg.asset(**CPU_LIGHT.asset_kwargs())
def source(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
    return dg.MaterializeResult(metadata=_evidence(context, CPU_LIGHT))


def _gpu_asset(name: str) -> dg.AssetsDefinition:
    @dg.asset(name=name, deps=[source], **GPU_TRAINING.asset_kwargs())
    def _gpu(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
        meta = _evidence(context, GPU_TRAINING)
        # A long first attempt on the GPU, to lose its node under it; a relaunch finishes.
        if meta.get("ray_gpu_ids", "none") != "none" and context.retry_number == 0:
            time.sleep(float(os.environ.get(HOLD_ENV, "0")))
        return dg.MaterializeResult(metadata=meta)

    return _gpu


gpu_a, gpu_b = _gpu_asset("gpu_a"), _gpu_asset("gpu_b")


@dg.asset(deps=[gpu_a], **CPU_LIGHT.asset_kwargs())
def after_gpu(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
    return dg.MaterializeResult(metadata=_evidence(context, CPU_LIGHT))


@dg.asset(**CPU_LIGHT.asset_kwargs())
def hungry(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
    """Needs more memory than its profile asks for: under the request's memory as a hard limit
    it runs out of memory for real (MemoryError), and is retried on the larger profile."""
    meta = _evidence(context, CPU_LIGHT)
    with exit_on_oom():
        limit = enforce_memory_request()
        block = bytearray(HUNGRY_BYTES)
        meta["allocated_bytes"] = str(len(block))
        meta["memory_limit_bytes"] = str(limit)
    return dg.MaterializeResult(metadata=meta)


ASSETS = [source, gpu_a, gpu_b, after_gpu, hungry]


def _job(name: str, selection: list[dg.AssetsDefinition], policy: str) -> dg.JobDefinition:
    job = dg.define_asset_job(name, selection=selection,
                              executor_def=ray_executor_def(policy_for(policy)))
    return dg.Definitions(assets=ASSETS, jobs=[job]).resolve_job_def(name)


# One function per policy: Dagster caches a reconstructable job per function in a process.
def two_gpu_job() -> dg.JobDefinition:
    """source -> gpu_a, gpu_b: two GPU-profile steps that could overlap (policy wait)."""
    return _job("two_gpu", [source, gpu_a, gpu_b], "wait")


def gpu_chain_wait() -> dg.JobDefinition:
    """source -> gpu_a -> after_gpu, GPU profile under on_unavailable=wait."""
    return _job("gpu_chain_wait", [source, gpu_a, after_gpu], "wait")


def gpu_chain_degrade_to_cpu() -> dg.JobDefinition:
    return _job("gpu_chain_degrade_to_cpu", [source, gpu_a, after_gpu], "degrade_to_cpu")


def gpu_chain_fail_and_escalate() -> dg.JobDefinition:
    return _job("gpu_chain_fail_and_escalate", [source, gpu_a, after_gpu], "fail_and_escalate")


def oom_job() -> dg.JobDefinition:
    """hungry alone: cpu-light, retried on cpu-training after running out of memory."""
    return _job("oom", [hungry], "wait")


GPU_CHAIN = {"wait": gpu_chain_wait, "degrade_to_cpu": gpu_chain_degrade_to_cpu,
             "fail_and_escalate": gpu_chain_fail_and_escalate}


# The code location's own assets on Ray: the environment (UNIFIED_AI_HOME, UNIFIED_AI_POLICY)
# is forwarded to each step's Ray job, which rebuilds the same definitions.
TORCH_MODEL_JOB = "torch_model_on_ray"


def code_location_torch_model() -> dg.JobDefinition:
    """training_set -> model_torch of the code location, on the placed Ray executor."""
    from unified_assets.definitions import build_definitions
    from unified_assets.policy import load_policy
    from unified_assets.settings import load_settings

    settings = load_settings()
    defs = build_definitions(settings)
    job = dg.define_asset_job(
        TORCH_MODEL_JOB, selection=["training_set", "model_torch"],
        executor_def=ray_executor_def(load_policy(settings.policy_path).placement))
    return dg.Definitions(assets=list(defs.assets), resources=defs.resources,
                          jobs=[job]).resolve_job_def(TORCH_MODEL_JOB)
