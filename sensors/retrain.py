"""A retrain request as every sensor makes it: the placement plan decided now, carried in
run tags (and per-step pod config on Kubernetes), with the trigger's reason."""

import dagster as dg

from unified_assets.placement.policy import PlacementPolicy
from unified_assets.settings import load_settings

IN_FLIGHT = [dg.DagsterRunStatus.QUEUED, dg.DagsterRunStatus.NOT_STARTED,
             dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.STARTED,
             dg.DagsterRunStatus.CANCELING]


def run_in_flight(context: dg.SensorEvaluationContext, job_name: str) -> bool:
    """A run of the job is queued or running: a new request would train on the same data."""
    return bool(context.instance.get_run_records(
        dg.RunsFilter(job_name=job_name, statuses=IN_FLIGHT), limit=1))


def deployment_is_kubernetes() -> bool:
    return load_settings().deployment == "kubernetes"


def retrain_request(context: dg.SensorEvaluationContext, job_name: str, placement: PlacementPolicy,
                    run_key: str, tags: dict[str, str]) -> dg.RunRequest | str:
    """The run request, or why there is none (the policy forbids placing it now)."""
    from unified_assets.placement import PlacementError
    from unified_assets.placement.launch import launch_plan

    try:
        plan_tags, run_config = launch_plan(
            context.repository_def.get_job(job_name), context.instance, placement,
            kubernetes=deployment_is_kubernetes())
    except PlacementError as error:
        return f"no placement: {error}"
    return dg.RunRequest(job_name=job_name, run_key=run_key, run_config=run_config,
                         tags={**tags, **plan_tags})
