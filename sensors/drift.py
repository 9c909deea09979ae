"""Drift asks for a retrain: each newly ingested batch is compared with the champion's
training data from stored profiles (milliseconds, far inside the 60 s sensor limit). One
retrain is requested per piece of evidence: the cursor remembers judged batches and the
run key names the drifted ones. A drifted batch still awaiting its labels is judged again
once they land (a retrain could not train on it before)."""

import json

import dagster as dg

from resources.artifact_store import ArtifactStore
from resources.dataset import DatasetResource
from resources.mlflow_registry import MlflowRegistry
from resources.policy import PolicyResource
from sensors.retrain import retrain_request, run_in_flight
from unified_assets.partitions import BATCHES


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
    if run_in_flight(context, job.name):
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
        from unified_assets.assets.labels import is_trainable

        drifted, awaiting = {}, []
        for batch in new:
            if batch in training_batches:
                continue
            result = batch_drift(store, merged, batch, policy.policy.drift)
            if not result["dataset_drift"]:
                continue
            if is_trainable(store, batch):
                drifted[batch] = result
            else:
                awaiting.append(batch)  # a retrain could not use it yet: judged again later
        cursor = json.dumps(sorted(judged | (set(new) - set(awaiting))))
        waiting = f"; drift in {awaiting} waits for their labels" if awaiting else ""
        if not drifted:
            return dg.SensorResult(run_requests=[], cursor=cursor,
                                   skip_reason=f"{len(new)} batch(es) judged: no retrain-ready "
                                               f"drift vs champion v{version}{waiting}")
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
            # The evidence stays unjudged: the retrain is asked for again once placement allows.
            return dg.SensorResult(run_requests=[], cursor=context.cursor,
                                   skip_reason=f"drift in {names} but {request}")
        return dg.SensorResult(run_requests=[request], cursor=cursor)

    return drift_retrain_sensor
