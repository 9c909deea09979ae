"""Live performance acts: a champion below the policy's floor gets a retrain request; one
far below the previous champion on the same rows gets a rollback request (or, when the
policy says `incident`, an incident a person acts on). One request per piece of evidence:
the cursor is the last materialization read, run keys name the batches and versions, and
evidence about a champion that has since been replaced is dropped. Retrains coalesce as the
drift sensor's do: evidence folds into a retrain queued and not started; while one trains,
one more is requested and the run queue (one retrain in flight) starts it afterwards."""

import dagster as dg

from resources.dataset import DatasetResource
from resources.decision_store import DecisionStore
from resources.escalation import Escalation
from resources.mlflow_registry import MlflowRegistry
from resources.policy import PolicyResource
from sensors.retrain import fold_into, pending_run, retrain_request, run_in_flight
from unified_assets.assets.live import ACTION_KEY, live_performance
from unified_assets.run_tags import SOURCE_TAG, started_because
from unified_assets.services.decisions import LIVE_ACTOR, mint_automation_token

POLICY_ACTOR = LIVE_ACTOR  # the name the sensor acts in; a person can never claim it
REGRESSION = "live_regression"
LIVE_BATCHES_TAG = "unified-ai/live-batches"


def _text(metadata, key: str) -> str | None:
    return metadata[key].value if key in metadata else None


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
            "action": _text(metadata, ACTION_KEY) or "ok",
            "reason": _text(metadata, "reason") or "",
            "champion": _text(metadata, "champion_version"),
            "previous": _text(metadata, "previous_champion"),
        })
    cursor = str(result.records[-1].storage_id) if result.records else context.cursor
    return verdicts, cursor


def _regression_incident(context, decisions: DecisionStore, escalation: Escalation,
                         details: dict) -> str:
    """One incident per regressed champion, escalated once, however many batches show it."""
    for incident in decisions.incidents(kind=REGRESSION):
        if incident["details"].get("champion") == details["champion"]:
            return f"incident #{incident['id']} already open for v{details['champion']}"
    incident = decisions.record_incident(kind=REGRESSION, model_name=None, actor=POLICY_ACTOR,
                                         reason=details["reason"], details=details)
    channel = escalation.escalate(context.log, f"live regression #{incident}", details)
    decisions.record_incident(kind="escalation", model_name=None, actor=POLICY_ACTOR,
                              reason=f"incident #{incident} escalated via {channel}",
                              details={"incident": incident, "channel": channel})
    return f"incident #{incident} ({channel}): {details['reason']}"


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
        dataset: DatasetResource,
        mlflow_registry: MlflowRegistry,
        policy: PolicyResource,
        decisions: DecisionStore,
        escalation: Escalation,
    ) -> dg.SensorResult | dg.SkipReason:
        verdicts, cursor = _verdicts(context)
        if not verdicts:
            return dg.SkipReason("no new live-performance result")
        rules, model = policy.policy, dataset.spec.name
        champion = mlflow_registry.alias_version(model)
        current = [v for v in verdicts if v["champion"] is not None and v["champion"] == champion]
        notes = [f"{len(verdicts) - len(current)} result(s) about an earlier champion dropped"] \
            if len(current) < len(verdicts) else []
        requests: list[dg.RunRequest] = []
        regressions = [v for v in current if v["action"] == "rollback"]
        if regressions:
            batches = ",".join(v["batch"] for v in regressions)
            last = regressions[-1]
            reason = f"v{champion} live on {batches}: {last['reason']}"
            if rules.live.on_regression == "incident":
                notes.append(_regression_incident(context, decisions, escalation, {
                    "champion": champion, "previous_champion": last["previous"],
                    "batches": batches, "reason": reason}))
            else:
                # The run acts in the sensor's name only with this one-time token, bound to
                # exactly this request (unified_assets/decisions.py says why it is minted).
                token = mint_automation_token(decisions, model=model, actor=POLICY_ACTOR,
                                              reason=reason, to_version=last["previous"],
                                              expected_from=champion)
                requests.append(dg.RunRequest(
                    job_name=rollback_job.name, run_key=f"live-rollback:v{champion}",
                    run_config={"ops": {"production_model": {"config": {
                        "action": "rollback", "rollback_to": last["previous"] or "",
                        "expected_from": champion, "by": POLICY_ACTOR, "reason": reason,
                        "token": token}}}},
                    tags={**started_because("live-regression", reason),
                          SOURCE_TAG: "sensor:live-performance", LIVE_BATCHES_TAG: batches}))
        slipping = [v for v in current if v["action"] == "retrain"] if not regressions else []
        if slipping:
            batches = ",".join(v["batch"] for v in slipping)
            pending = pending_run(context, retrain_job.name)
            if pending is not None:
                # Coalesce: the queued retrain builds its training set when it starts, so it
                # already trains on these batches; its tags now say so too.
                done = fold_into(context, pending, LIVE_BATCHES_TAG, batches.split(","),
                                 "; ".join(f"live {v['batch']} v{v['champion']}: {v['reason']}"
                                           for v in slipping))
                notes.append(done)
                summary = "; ".join(notes)
                return dg.SensorResult(run_requests=requests, cursor=cursor,
                                       skip_reason=None if requests else summary)
            if run_in_flight(context, retrain_job.name):
                context.log.info(f"a {retrain_job.name} run is in flight; this one queues behind it")
            request = retrain_request(
                context, retrain_job.name, rules.placement, run_key=f"live-retrain:{batches}",
                tags={**started_because("late-labels", "; ".join(
                    f"{v['batch']} v{v['champion']}: {v['reason']}" for v in slipping)),
                      LIVE_BATCHES_TAG: batches})
            if isinstance(request, str):
                return dg.SensorResult(run_requests=requests, cursor=context.cursor,
                                       skip_reason=None if requests else
                                       f"retrain for {batches} not launched: {request}")
            requests.append(request)
        if not requests:
            summary = "; ".join(notes) or f"{len(verdicts)} live result(s): no action needed"
            return dg.SensorResult(run_requests=[], cursor=cursor, skip_reason=summary)
        return dg.SensorResult(run_requests=requests, cursor=cursor)

    return live_performance_sensor
