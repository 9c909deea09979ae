"""Drift asks for a retrain: each newly ingested batch is compared with the champion's
training data from stored profiles (milliseconds, far inside the 60 s sensor limit). One
retrain is requested per piece of evidence: the cursor remembers judged batches and the
run key names the drifted ones."""

import json

import dagster as dg

from resources.artifact_store import ArtifactStore
from resources.dataset import DatasetResource
from resources.mlflow_registry import MlflowRegistry
from resources.policy import PolicyResource
from sensors.retrain import retrain_request
from unified_assets.partitions import BATCHES


def build_drift_sensor(job) -> dg.SensorDefinition:
    @dg.sensor(
        name="drift_retrain_sensor",
        job=job,
        minimum_interval_seconds=30,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="Requests train -> evaluate -> gated promotion when new batches drift.",
    )
    def drift_retrain_sensor(
        context: dg.SensorEvaluationContext,
        dataset: DatasetResource,
        store: ArtifactStore,
        mlflow_registry: MlflowRegistry,
        policy: PolicyResource,
    ):
        from unified_assets.monitoring import batch_drift, champion_reference, profile_key

        judged = set(json.loads(context.cursor or "[]"))
        reference = champion_reference(store, mlflow_registry, dataset.spec.name)
        if reference is None:
            return dg.SkipReason("no champion with profiled training batches yet")
        version, training_batches, merged = reference
        new = [b for b in context.instance.get_dynamic_partitions(BATCHES.name)
               if b not in judged and store.exists(profile_key(b))]
        if not new:
            return dg.SkipReason("no newly profiled batch")
        drifted = {}
        for batch in new:
            if batch in training_batches:
                continue
            result = batch_drift(store, merged, batch, policy.policy.drift)
            if result["dataset_drift"]:
                drifted[batch] = result
        cursor = json.dumps(sorted(judged | set(new)))
        if not drifted:
            return dg.SensorResult(run_requests=[], cursor=cursor,
                                   skip_reason=f"{len(new)} batch(es) judged: no drift vs "
                                               f"champion v{version}")
        names = sorted(drifted)
        summary = "; ".join(
            f"{b}: {r['number_of_drifted_columns']}/{r['number_of_columns']} columns "
            f"({', '.join(r['drifted_columns'][:5])})" for b, r in sorted(drifted.items()))
        context.log.info(f"drift vs champion v{version}: {summary}")
        request = retrain_request(
            context, job.name, policy.policy.placement,
            run_key=f"drift-retrain:{','.join(names)}",
            tags={"unified-ai/trigger": "drift", "unified-ai/drift-batches": ",".join(names),
                  "unified-ai/reason": f"drift vs champion v{version}: {summary}"[:1000]})
        if isinstance(request, str):
            return dg.SensorResult(run_requests=[], cursor=cursor,
                                   skip_reason=f"drift in {names} but {request}")
        return dg.SensorResult(run_requests=[request], cursor=cursor)

    return drift_retrain_sensor
