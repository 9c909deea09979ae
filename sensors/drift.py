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

IN_FLIGHT = [dg.DagsterRunStatus.QUEUED, dg.DagsterRunStatus.NOT_STARTED,
             dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.STARTED]


def _bootstrap(context: dg.SensorEvaluationContext, job, store: ArtifactStore,
               policy: PolicyResource) -> dg.SensorResult | dg.SkipReason:
    """No champion yet: the first training starts once the policy's number of labelled
    batches is in, one run at a time, and again only when more batches arrive."""
    from unified_assets.assets.labels import is_trainable

    wanted = policy.policy.drift.bootstrap_batches
    if wanted is None:
        return dg.SkipReason("no champion yet; the policy leaves the first training to a person")
    ready = [b for b in context.instance.get_dynamic_partitions(BATCHES.name) if is_trainable(store, b)]
    if len(ready) < wanted:
        return dg.SkipReason(f"no champion yet: {len(ready)} of {wanted} labelled batches ingested")
    if context.instance.get_run_records(dg.RunsFilter(job_name=job.name, statuses=IN_FLIGHT), limit=1):
        return dg.SkipReason(f"no champion yet; a {job.name} run is in progress")
    request = retrain_request(
        context, job.name, policy.policy.placement, run_key=f"bootstrap:{','.join(ready)}",
        tags={"unified-ai/trigger": "bootstrap",
              "unified-ai/reason": f"no champion yet: {len(ready)} labelled batches ingested "
                                   f"(policy drift.bootstrap_batches={wanted})"})
    if isinstance(request, str):
        return dg.SkipReason(f"no champion yet but {request}")
    return dg.SensorResult(run_requests=[request], cursor=context.cursor)


def build_drift_sensor(job) -> dg.SensorDefinition:
    @dg.sensor(
        name="drift_retrain_sensor",
        job=job,
        minimum_interval_seconds=30,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="Requests train -> evaluate -> gated promotion when new batches drift (and "
        "the first training once enough labelled batches are in).",
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
            if mlflow_registry.alias_version(dataset.spec.name) is None:
                return _bootstrap(context, job, store, policy)
            return dg.SkipReason("the champion has no profiled training batches")
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
