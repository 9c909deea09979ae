"""Inside a step that runs as a Ray job: the decision it was launched with and the evidence of
where it ran. The Ray step handler (`ray_executor`) passes the decision and request through
the job's environment (`ENV_*`); here they are read back, the step's final decision is the
launch decision checked against what Ray really gave (GPU ids), and `ray_evidence` says which
node, pool and GPUs the step had, from Ray's own job and node records."""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import replace
from functools import lru_cache

from unified_assets.compute import POOL_LABEL
from unified_assets.placement.decision import Decision, PlacementError, StepRequirement
from unified_assets.placement.ray_warm import SERVER_ENV
from unified_assets.placement.serialize import decision_from_tag_value

ENV_DECISION = "UNIFIED_AI_RAY_DECISION"  # the launch decision (serialize's tag value)
ENV_REQUEST = "UNIFIED_AI_RAY_REQUEST"  # what the Ray job asked for (JSON)
ENV_SUBMISSION_ID = "UNIFIED_AI_RAY_SUBMISSION_ID"
ENV_DASHBOARD = "UNIFIED_AI_RAY_DASHBOARD"  # the dashboard URL the job was submitted to
ENV_PROFILE = "UNIFIED_AI_RAY_PROFILE"  # the profile the request was made for (after an OOM:
#                                         the larger one the policy names)
ENV_PROFILE_FROM = "UNIFIED_AI_RAY_PROFILE_FROM"  # the step's own profile, when upsized
# A step that ran out of memory exits with this code (EX_TEMPFAIL), so the Ray step handler can
# tell it from any other failure; a process the kernel's OOM killer ended exits -9 / 137.
OOM_EXIT_CODE = 75
OOM_EXIT_CODES = frozenset({OOM_EXIT_CODE, 137, -9})
OOM_ERRORS = ("MemoryError", "OutOfMemoryError")  # host, and torch's CUDA out of memory
NO_GPU = "none"
WATCH_SECONDS = 1.0
JOB_CHECK_EVERY = 2  # ask the dashboard for the job's status every 2 watch ticks
ENDED_BY_RAY = frozenset({"FAILED", "STOPPED"})
_watching = threading.Event()


def _job_ended(environ: Mapping[str, str]) -> str | None:
    """The Ray job's status if Ray already ended it (FAILED, STOPPED) while we run."""
    from unified_assets.placement.ray_capacity import get_ray_job

    dashboard, submission_id = environ.get(ENV_DASHBOARD), environ.get(ENV_SUBMISSION_ID)
    if not dashboard or not submission_id:
        return None
    try:
        status = str(get_ray_job(dashboard, submission_id, timeout=5).get("status"))
    except (OSError, ValueError):  # dashboard unreachable: keep running, Ray decides
        return None
    return status if status in ENDED_BY_RAY else None


def watch_supervisor(interval: float = WATCH_SECONDS) -> None:
    """Exit this step process once its Ray job is over without it: its parent (the job
    supervisor's shell, or for a warm step the warm server) is gone, or Ray recorded the job
    as FAILED or STOPPED. Ray kills a
    job's processes when its supervisor dies, but only while the supervisor's node lives, and
    not if the node dies while the supervisor starts the entrypoint: the step then ran on,
    orphaned, and could write a materialization after Dagster had failed or retried the step."""
    if _watching.is_set():
        return
    _watching.set()
    parent, environ = os.getppid(), dict(os.environ)

    def watch() -> None:
        ticks = 0
        while True:
            time.sleep(interval)
            ticks += 1
            why = "its parent process exited" if os.getppid() != parent else None
            if why is None and ticks % JOB_CHECK_EVERY == 0:
                status = _job_ended(environ)
                why = f"Ray recorded its job as {status}" if status else None
            if why:
                print(f"unified-ai: this step's Ray job is over ({why}); the step process exits",
                      file=sys.stderr, flush=True)
                os._exit(137)

    threading.Thread(target=watch, name="ray-job-watch", daemon=True).start()


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
    if step.profile.name not in (launched.profile.name, env.get(ENV_PROFILE_FROM)):
        return None
    watch_supervisor()
    # After an out-of-memory retry the step runs with the larger profile it was launched for.
    decision = replace(launched, requirement=replace(step, profile=launched.profile),
                       stage="start")
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
    server = env.get(SERVER_ENV)
    return {
        "ray_step_process": (f"forked from warm server {server} (libraries preloaded)"
                             if server else "fresh interpreter"),
        "ray_node_id": node_id,
        "ray_node_pool": pool,
        "ray_gpu_ids": ",".join(ids) if ids else NO_GPU,
        "ray_cuda_visible_devices": env.get("CUDA_VISIBLE_DEVICES", "(unset)"),
        "ray_request": env.get(ENV_REQUEST, "{}"),
        "ray_profile": env.get(ENV_PROFILE, "unknown"),
        "ray_submission_id": submission_id,
    }


def is_out_of_memory(error: BaseException) -> bool:
    """A host (MemoryError) or CUDA (torch.cuda.OutOfMemoryError) out-of-memory error."""
    return any(type(e).__name__ in OOM_ERRORS for e in (error, error.__cause__) if e is not None)


@contextmanager
def exit_on_oom() -> Iterator[None]:
    """Around a step's work on Ray: an out-of-memory error ends the process with
    `OOM_EXIT_CODE`, so the Ray step handler retries the step on the larger profile the policy
    names (`on_oom_profile`) instead of Dagster recording a plain failure. Elsewhere, or for
    any other error, the error propagates unchanged."""
    try:
        yield
    except BaseException as error:
        if not (on_ray() and is_out_of_memory(error)):
            raise
        print(f"unified-ai: out of memory ({type(error).__name__}: {error}); exiting "
              f"{OOM_EXIT_CODE} so the step is retried on a larger profile",
              file=sys.stderr, flush=True)
        os._exit(OOM_EXIT_CODE)


def enforce_memory_request(environ: Mapping[str, str] | None = None) -> int | None:
    """Make the Ray request's memory a hard limit on this process's heap (RLIMIT_DATA, on top
    of what is already in use), as a Kubernetes memory limit is: Ray only accounts for it.
    Returns the limit in bytes, None when not on Ray."""
    import resource

    env = os.environ if environ is None else environ
    memory = json.loads(env.get(ENV_REQUEST) or "{}").get("memory")
    if not memory:
        return None
    in_use = 0
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmData:"):
                in_use = int(line.split()[1]) * 1024
    limit = in_use + int(memory)
    resource.setrlimit(resource.RLIMIT_DATA, (limit, resource.getrlimit(resource.RLIMIT_DATA)[1]))
    return limit


def request_json(request: Mapping[str, object]) -> str:
    return json.dumps(request, separators=(",", ":"), sort_keys=True)
