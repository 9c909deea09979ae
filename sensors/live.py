"""Live performance acts: a champion below the policy's floor gets a retrain request; one
far below the previous champion on the same rows gets a rollback request (or, when the
policy says `incident`, an incident a person acts on). One request per piece of evidence:
the cursor is the last materialization read and run keys name the batches and versions."""

import dagster as dg

from resources.decision_store import DecisionStore
from resources.escalation import Escalation
from resources.policy import PolicyResource
from sensors.retrain import retrain_request
from unified_assets.assets.live import ACTION_KEY, live_performance

POLICY_ACTOR = "policy:live-performance"


def _verdicts(context: dg.SensorEvaluationContext) -> tuple[list[dict], str | None]:
    """Live verdicts materialized since the cursor, oldest first, and the new cursor."""
    after = int(context.cursor) if context.cursor else None
    result = context.instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=live_performance.key, after_storage_id=after),
        limit=200, ascending=True)
    verdicts = []
    for record in result.records:
        metadata = record.asset_materialization.metadata
        verdicts.append({
            "batch": record.asset_materialization.partition,
            "action": metadata[ACTION_KEY].value if ACTION_KEY in metadata else "ok",
            "reason": metadata["reason"].value if "reason" in metadata else "",
            "champion": metadata["champion_version"].value,
            "previous": metadata["previous_champion"].value,
        })
    cursor = str(result.records[-1].storage_id) if result.records else context.cursor
    return verdicts, cursor


def build_live_sensor(retrain_job, rollback_job) -> dg.SensorDefinition:
    @dg.sensor(
        name="live_performance_sensor",
        jobs=[retrain_job, rollback_job],
        minimum_interval_seconds=15,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="Requests a retrain or a rollback when the champion's live numbers say so.",
    )
    def live_performance_sensor(
        context: dg.SensorEvaluationContext,
        policy: PolicyResource,
        decisions: DecisionStore,
        escalation: Escalation,
    ) -> dg.SensorResult | dg.SkipReason:
        verdicts, cursor = _verdicts(context)
        if not verdicts:
            return dg.SkipReason("no new live-performance result")
        rules = policy.policy
        requests: list[dg.RunRequest] = []
        notes: list[str] = []
        regressions: dict[str, list[dict]] = {}
        for verdict in verdicts:
            if verdict["action"] == "rollback":
                regressions.setdefault(verdict["champion"], []).append(verdict)
        for champion, evidence in regressions.items():
            batches = ",".join(v["batch"] for v in evidence)
            reason = f"v{champion} live on {batches}: {evidence[-1]['reason']}"
            if rules.live.on_regression == "incident":
                details = {"champion": champion, "previous_champion": evidence[-1]["previous"],
                           "batches": batches, "reason": reason}
                incident = decisions.record_incident(kind="live_regression", model_name=None,
                                                     actor=POLICY_ACTOR, reason=reason, details=details)
                channel = escalation.escalate(context.log, f"live regression #{incident}", details)
                notes.append(f"incident #{incident} ({channel}): {reason}")
                continue
            requests.append(dg.RunRequest(
                job_name=rollback_job.name, run_key=f"live-rollback:v{champion}",
                run_config={"ops": {"production_model": {"config": {
                    "action": "rollback", "rollback_to": evidence[-1]["previous"],
                    "by": POLICY_ACTOR, "reason": reason}}}},
                tags={"unified-ai/trigger": "live-regression", "unified-ai/live-batches": batches,
                      "unified-ai/reason": reason[:1000]}))
        slipping = [v for v in verdicts
                    if v["action"] == "retrain" and v["champion"] not in regressions]
        if slipping:
            batches = ",".join(v["batch"] for v in slipping)
            request = retrain_request(
                context, retrain_job.name, rules.placement,
                run_key=f"live-retrain:{batches}",
                tags={"unified-ai/trigger": "late-labels", "unified-ai/live-batches": batches,
                      "unified-ai/reason": "; ".join(
                          f"{v['batch']} v{v['champion']}: {v['reason']}" for v in slipping)[:1000]})
            if isinstance(request, str):
                notes.append(f"retrain for {batches} not launched: {request}")
            else:
                requests.append(request)
        if not requests:
            summary = "; ".join(notes) or f"{len(verdicts)} live result(s): no action needed"
            return dg.SensorResult(run_requests=[], cursor=cursor, skip_reason=summary)
        return dg.SensorResult(run_requests=requests, cursor=cursor)

    return live_performance_sensor
