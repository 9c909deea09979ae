"""Inside a step that runs as a Ray job: the decision it was launched with and the evidence of
where it ran. The Ray step handler (`ray_executor`) passes the decision and request through
the job's environment (`ENV_*`); here they are read back, the step's final decision is the
launch decision checked against what Ray really gave (GPU ids), and `ray_evidence` says which
node, pool and GPUs the step had, from Ray's own job and node records."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import replace
from functools import lru_cache

from unified_assets.compute import POOL_LABEL
from unified_assets.placement.decision import Decision, PlacementError, StepRequirement
from unified_assets.placement.serialize import decision_from_tag_value

ENV_DECISION = "UNIFIED_AI_RAY_DECISION"  # the launch decision (serialize's tag value)
ENV_REQUEST = "UNIFIED_AI_RAY_REQUEST"  # what the Ray job asked for (JSON)
ENV_SUBMISSION_ID = "UNIFIED_AI_RAY_SUBMISSION_ID"
ENV_DASHBOARD = "UNIFIED_AI_RAY_DASHBOARD"  # the dashboard URL the job was submitted to
NO_GPU = "none"


def on_ray(environ: Mapping[str, str] | None = None) -> bool:
    return ENV_DECISION in (os.environ if environ is None else environ)


def gpu_ids(environ: Mapping[str, str] | None = None) -> tuple[str, ...]:
    """The GPU ids Ray gave this job: Ray sets CUDA_VISIBLE_DEVICES for a job that asked for
    GPUs (and to the empty string for one that did not)."""
    env = os.environ if environ is None else environ
    return tuple(i for i in env.get("CUDA_VISIBLE_DEVICES", "").split(",") if i.strip())


def launch_decision(step: StepRequirement,
                    environ: Mapping[str, str] | None = None) -> Decision | None:
    """The final decision of a step launched on Ray, or None when not on Ray (or launched for
    another profile). A GPU decision for which Ray gave no GPU is refused: the step would run
    on CPU with GPU settings, silently."""
    env = os.environ if environ is None else environ
    raw = env.get(ENV_DECISION)
    if not raw:
        return None
    launched = decision_from_tag_value(raw)
    if launched.profile != step.profile:
        return None
    decision = replace(launched, requirement=step, stage="start")
    ids = gpu_ids(env)
    if decision.target == "gpu" and len(ids) < step.profile.gpus:
        raise PlacementError(f"step {step.step_key}: launched on Ray for {step.profile.gpus} "
                             f"GPU(s) but Ray gave GPU ids {list(ids) or NO_GPU}", retryable=True)
    given = f"GPU ids {','.join(ids)}" if ids else "no GPU"
    return replace(decision, reason=f"{decision.reason}; at start: Ray gave {given}")


@lru_cache(maxsize=4)
def _job_and_node(dashboard: str, submission_id: str) -> tuple[str, str]:
    """(node id, pool) of the node running this job, from Ray's job and node records."""
    from unified_assets.placement.ray_capacity import (
        UNLABELLED_POOL,
        get_ray_job,
        get_ray_node,
    )

    try:
        node_id = get_ray_job(dashboard, submission_id).get("driver_node_id") or ""
        node = get_ray_node(dashboard, node_id) if node_id else None
    except OSError as error:  # the dashboard is unreachable: say so, do not fail the step
        return f"unknown ({type(error).__name__}: {error})", "unknown"
    pool = ((node or {}).get("labels") or {}).get(POOL_LABEL, UNLABELLED_POOL)
    return node_id or "unknown", pool


def ray_evidence(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """Materialization metadata of a step that ran as a Ray job (empty elsewhere): the Ray
    node id and pool, the GPU ids given, the request and the Ray job's submission id."""
    env = os.environ if environ is None else environ
    if ENV_DECISION not in env:
        return {}
    submission_id = env.get(ENV_SUBMISSION_ID, "")
    node_id, pool = _job_and_node(env.get(ENV_DASHBOARD, ""), submission_id)
    ids = gpu_ids(env)
    return {
        "ray_node_id": node_id,
        "ray_node_pool": pool,
        "ray_gpu_ids": ",".join(ids) if ids else NO_GPU,
        "ray_cuda_visible_devices": env.get("CUDA_VISIBLE_DEVICES", "(unset)"),
        "ray_request": env.get(ENV_REQUEST, "{}"),
        "ray_submission_id": submission_id,
    }


def request_json(request: Mapping[str, object]) -> str:
    return json.dumps(request, separators=(",", ":"), sort_keys=True)
