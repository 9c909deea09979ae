"""A failed run becomes an incident record (run, step, error, assets affected) and is
escalated through the configured channel."""

import dagster as dg

from resources.decision_store import DecisionStore
from resources.escalation import Escalation


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
    description="Records an incident for every failed run and escalates it.",
)
def run_failure_incidents(
    context: dg.RunFailureSensorContext, decisions: DecisionStore, escalation: Escalation
) -> None:
    run = context.dagster_run
    steps = context.get_step_failure_events()
    failed_steps = [e.step_key for e in steps]
    errors = [e.event_specific_data.error.message.strip()[:2000] for e in steps
              if e.event_specific_data and e.event_specific_data.error]
    details = {
        "run_id": run.run_id,
        "job": run.job_name,
        "failed_steps": failed_steps,
        "errors": errors or [context.failure_event.message],
        "assets_affected": _not_materialized(context.instance, run),
        "tags": {k: v for k, v in run.tags.items() if k.startswith("unified-ai/")},
    }
    incident = decisions.record_incident(kind="run_failure", model_name=None, actor="dagster",
                                         reason=f"run {run.run_id} of {run.job_name} failed",
                                         details=details)
    channel = escalation.escalate(context.log, f"run failure #{incident}", details)
    decisions.record_incident(kind="escalation", model_name=None, actor="dagster",
                              reason=f"incident #{incident} escalated via {channel}",
                              details={"incident": incident, "channel": channel})
