"""A retrain request as every sensor makes it: the placement plan decided now, carried in
run tags (and per-step pod config on Kubernetes), with the trigger's reason."""

import dagster as dg

from unified_assets.placement.policy import PlacementPolicy
from unified_assets.run_tags import MAX_REASON, REASON_TAG

PENDING = [dg.DagsterRunStatus.QUEUED, dg.DagsterRunStatus.NOT_STARTED]
# Job tag on every retrain run: the run queue admits one at a time per code location (one
# model each), `concurrency.runs.tag_concurrency_limits` in deploy/*/dagster.yaml.
RETRAIN_TAG = "unified-ai/retrain"
IN_FLIGHT = [dg.DagsterRunStatus.QUEUED, dg.DagsterRunStatus.NOT_STARTED,
             dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.STARTED,
             dg.DagsterRunStatus.CANCELING]


def run_in_flight(context: dg.SensorEvaluationContext, job_name: str) -> bool:
    """A run of the job is queued or running: a new request would train on the same data."""
    return bool(context.instance.get_run_records(
        dg.RunsFilter(job_name=job_name, statuses=IN_FLIGHT), limit=1))


def pending_run(context: dg.SensorEvaluationContext, job_name: str) -> dg.DagsterRun | None:
    """The queued retrain that has not started: new evidence folds into it, since it builds
    its training set (the newest batches) only when it starts."""
    records = context.instance.get_run_records(
        dg.RunsFilter(job_name=job_name, statuses=PENDING), limit=1)
    return records[0].dagster_run if records else None


def fold_into(context: dg.SensorEvaluationContext, run: dg.DagsterRun, batches_tag: str,
              batches: list[str], reason: str) -> str:
    """Adds evidence to a pending retrain's tags (batches and reason): the same run trains on
    it, so no second retrain is queued for the same window. Returns what was done."""
    before = [b for b in run.tags.get(batches_tag, "").split(",") if b]
    merged = sorted(set(before) | set(batches))
    old = run.tags.get(REASON_TAG, "")
    context.instance.add_run_tags(run.run_id, {
        batches_tag: ",".join(merged),
        REASON_TAG: (f"{old}; also {reason}" if old else reason)[:MAX_REASON]})
    return f"folded {', '.join(batches)} into pending run {run.run_id}"


K8S_EXECUTOR = "k8s"  # the executor definitions.py gives every job on Kubernetes
RAY_EXECUTOR = "ray"  # ... and every job on Ray


def runs_on_kubernetes(job: dg.JobDefinition) -> bool:
    """Whether the job's steps run as Kubernetes pods: read from the executor the definitions
    module chose from the settings once, never from the environment on each tick."""
    return job.executor_def.name == K8S_EXECUTOR


def ray_address_of(job: dg.JobDefinition) -> str | None:
    """The Ray dashboard the job's steps are submitted to (deployment `ray`), read from the
    executor the definitions module configured; None when the steps do not run on Ray."""
    if job.executor_def.name != RAY_EXECUTOR:
        return None
    resolved = job.executor_def.config_schema.resolve_config({})
    return resolved.value["config"]["address"] if resolved.success else None


def retrain_request(context: dg.SensorEvaluationContext, job_name: str, placement: PlacementPolicy,
                    run_key: str, tags: dict[str, str],
                    kubernetes: bool | None = None) -> dg.RunRequest | str:
    """The run request, or why there is none (the policy forbids placing it now).
    `kubernetes`: the deployment as the definitions module settled it; None reads it from
    the job's executor."""
    from unified_assets.placement import PlacementError
    from unified_assets.placement.launch import launch_plan

    job = context.repository_def.get_job(job_name)
    try:
        plan_tags, run_config = launch_plan(
            job, context.instance, placement,
            kubernetes=runs_on_kubernetes(job) if kubernetes is None else kubernetes,
            ray_address=ray_address_of(job))
    except PlacementError as error:
        return f"no placement: {error}"
    return dg.RunRequest(job_name=job_name, run_key=run_key, run_config=run_config,
                         tags={**tags, **plan_tags})
