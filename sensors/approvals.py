"""Approvals from the CLI reach the graph: a new approve decision in the decision store
re-evaluates `approval`, and promotion follows in the same run without further clicks."""

import dagster as dg

from resources.decision_store import DecisionStore
from unified_assets.run_tags import TRIGGER_TAG


def build_approval_sensor(job) -> dg.SensorDefinition:
    @dg.sensor(
        name="approval_decisions_sensor",
        job=job,
        minimum_interval_seconds=10,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="Starts approval -> production when a decision is recorded from the CLI.",
    )
    def approval_decisions_sensor(context: dg.SensorEvaluationContext, decisions: DecisionStore):
        after = int(context.cursor or 0)
        events = decisions.events(after_id=after)
        if not events:
            return dg.SkipReason("no new approval events")
        requests = [
            dg.RunRequest(
                run_key=f"decision:{e['id']}",
                tags={TRIGGER_TAG: "approval", "unified-ai/model-version": e["version"],
                      "unified-ai/decided-by": e["actor"] or ""},
            )
            for e in events
            if e["kind"] == "decision" and e["decision"] == "approve"
            and (e["details"] or {}).get("source") == "cli"
        ]
        return dg.SensorResult(run_requests=requests, cursor=str(events[-1]["id"]))

    return approval_decisions_sensor
