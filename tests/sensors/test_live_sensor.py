"""The live-performance sensor's retrain request coalesces like the drift sensor's: new
evidence folds into a retrain queued and not started, instead of waiting for it (and then
queueing a second retrain on the same window)."""

import dagster as dg

from unified_assets.assets.live import ACTION_KEY
from unified_assets.definitions import build_definitions
from unified_assets.partitions import BATCHES


class Champion(dg.ConfigurableResource):
    """The registry as the sensor reads it: only the champion's version matters here."""

    version: str = "3"

    def alias_version(self, _model: str) -> str:
        return self.version


def _verdict(instance, batch: str, action: str = "retrain") -> None:
    instance.report_runless_asset_event(dg.AssetMaterialization(
        asset_key="live_performance", partition=batch,
        metadata={ACTION_KEY: action, "reason": f"roc_auc below floor on {batch}",
                  "champion_version": "3", "previous_champion": "2"}))


def _tick(defs, instance, cursor=None):
    sensor = defs.resolve_sensor_def("live_performance_sensor")
    resources = {k: defs.resources[k] for k in sensor.required_resource_keys}
    resources["mlflow_registry"] = Champion()
    with dg.build_sensor_context(instance=instance, cursor=cursor, definitions=defs,
                                 resources=resources) as context:
        return sensor(context)


def _retrain_run(defs, instance, status, tags):
    job = defs.resolve_job_def("train_evaluate_promote")
    return instance.create_run_for_job(job, status=status, tags={**job.run_tags, **tags})


def test_live_evidence_folds_into_the_pending_retrain(settings, instance):
    defs = build_definitions(settings)
    instance.add_dynamic_partitions(BATCHES.name, ["batch-00001", "batch-00002"])
    pending = _retrain_run(defs, instance, dg.DagsterRunStatus.NOT_STARTED, {
        "unified-ai/trigger": "late-labels", "unified-ai/live-batches": "batch-00001",
        "unified-ai/reason": "batch-00001 v3: roc_auc below floor"})
    _verdict(instance, "batch-00002")

    result = _tick(defs, instance)
    assert result.run_requests == []
    assert result.cursor is not None  # consumed: the pending run carries it
    tags = instance.get_run_by_id(pending.run_id).tags
    assert tags["unified-ai/live-batches"] == "batch-00001,batch-00002"
    assert "batch-00002" in tags["unified-ai/reason"]
    # The tick says which run took the evidence (its id, the key a person follows).
    assert pending.run_id in result.skip_reason.skip_message
    assert isinstance(_tick(defs, instance, result.cursor), dg.SkipReason)


def test_live_evidence_during_a_running_retrain_queues_one_retrain(settings, instance):
    """A retrain already training cannot use evidence that arrived after it started: one
    retrain is requested, and the run queue starts it after the running one."""
    defs = build_definitions(settings)
    instance.add_dynamic_partitions(BATCHES.name, ["batch-00002"])
    _retrain_run(defs, instance, dg.DagsterRunStatus.STARTED, {"unified-ai/trigger": "drift"})
    _verdict(instance, "batch-00002")
    result = _tick(defs, instance)
    (request,) = result.run_requests
    assert request.tags["unified-ai/live-batches"] == "batch-00002"
    assert request.tags["unified-ai/trigger"] == "late-labels"
