"""A failed run becomes an incident record (run, step, error, assets affected) and is
escalated through the configured channel. Only real failures (errors, faults): a run that
failed because a step refused a request (a decision or rollback not allowed) already says
why in one line and was recorded as a refusal, so it files no incident. Holds never fail."""

import dagster as dg

from resources.decision_store import DecisionStore
from resources.escalation import Escalation
from unified_assets.services.refusals import refusal, step_error


def _not_materialized(instance: dg.DagsterInstance, run: dg.DagsterRun) -> list[str]:
    """Planned steps of the run that did not succeed (step keys are the asset names here)."""
    plan = instance.get_execution_plan_snapshot(run.execution_plan_snapshot_id)
    succeeded = {
        record.event_log_entry.step_key
        for record in instance.get_records_for_run(
            run.run_id, of_type=dg.DagsterEventType.STEP_SUCCESS
        ).records
    }
    return sorted(set(plan.step_keys_to_execute) - succeeded)


@dg.run_failure_sensor(
    name="run_failure_incidents",
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Records an incident for every run that failed on an error or fault and "
    "escalates it; a run failed by a refused request (recorded as a refusal) files none.",
)
def run_failure_incidents(
    context: dg.RunFailureSensorContext, decisions: DecisionStore, escalation: Escalation
) -> dg.SkipReason | None:
    run = context.dagster_run
    steps = context.get_step_failure_events()
    refusals = [refusal(e) for e in steps]
    if steps and all(refusals):
        # Everything that failed was a refused request: the run says why, nothing is broken.
        message = f"run {run.run_id} of {run.job_name} refused a request: {'; '.join(refusals)}"
        context.log.info(message)
        return dg.SkipReason(f"no incident: {message}")
    failed = [e for e, refused in zip(steps, refusals, strict=True) if not refused]
    errors = [error for error in map(step_error, failed) if error]
    details = {
        "run_id": run.run_id,
        "job": run.job_name,
        "failed_steps": [e.step_key for e in failed],
        "errors": errors or [context.failure_event.message],
        "assets_affected": _not_materialized(context.instance, run),
        "tags": {k: v for k, v in run.tags.items() if k.startswith("unified-ai/")},
    }
    first = (f"{failed[0].step_key}: " if failed else "") + details["errors"][0]
    reason = f"run {run.run_id} of {run.job_name} failed at {first.splitlines()[0][:300]}"
    incident = decisions.record_incident(kind="run_failure", model_name=None, actor="dagster",
                                         reason=reason, details=details)
    channel = escalation.escalate(context.log, f"run failure #{incident}", details)
    decisions.record_incident(kind="escalation", model_name=None, actor="dagster",
                              reason=f"incident #{incident} escalated via {channel}",
                              details={"incident": incident, "channel": channel})
    return None
