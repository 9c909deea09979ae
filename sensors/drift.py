"""Drift asks for a retrain, on evidence already in the catalog: the sensor reads the
`batch_drift` materializations (the per-column decision each ingestion run records for its
batches) and never recomputes drift. Its cursor is the last materialization read plus
the drifted batches still awaiting their labels (judged again once they land: a retrain could
not train on them before). Retrains coalesce: while a retrain is queued and not started, new
evidence folds into it (its tags name every batch); otherwise one retrain is requested, and
the run queue (tag `unified-ai/retrain`, limit 1) keeps one in flight."""

import json

import dagster as dg

from resources.dataset import DatasetResource
from resources.mlflow_registry import MlflowRegistry, import_client_in_background
from resources.policy import PolicyResource
from sensors import EVERY_DAEMON_LOOP_S
from sensors.retrain import fold_into, pending_run, retrain_request, run_in_flight
from unified_assets.partitions import BATCHES
from unified_assets.run_tags import started_because

DRIFT_BATCHES_TAG = "unified-ai/drift-batches"
EVIDENCE_TAG = "unified-ai/evidence"


def _bootstrap(context: dg.SensorEvaluationContext, job,
               policy: PolicyResource) -> dg.SensorResult | dg.SkipReason:
    """No champion yet: the first training starts once the policy's number of labelled
    batches is in, one run at a time, and again only when more batches arrive. Which batches
    are labelled and valid is read from their materializations, never from files."""
    from unified_assets.assets.labels import is_trainable

    wanted = policy.policy.drift.bootstrap_batches
    if wanted is None:
        return dg.SkipReason("no champion yet; the policy leaves the first training to a person")
    instance = context.instance
    ready = [b for b in instance.get_dynamic_partitions(BATCHES.name) if is_trainable(instance, b)]
    if len(ready) < wanted:
        return dg.SkipReason(f"no champion yet: {len(ready)} of {wanted} labelled batches ingested")
    if run_in_flight(context, job.name):
        return dg.SkipReason(f"no champion yet; a {job.name} run is in progress")
    request = retrain_request(
        context, job.name, policy.policy.placement, run_key=f"bootstrap:{','.join(ready)}",
        tags=started_because("bootstrap", f"no champion yet: {len(ready)} labelled batches "
                             f"ingested (policy drift.bootstrap_batches={wanted})"))
    if isinstance(request, str):
        return dg.SkipReason(f"no champion yet but {request}")
    return dg.SensorResult(run_requests=[request], cursor=context.cursor)


def _load_cursor(cursor: str | None) -> tuple[int | None, dict[str, dict]]:
    """(last batch_drift storage id read, awaiting-labels evidence by batch). A cursor from
    before (a list of judged batches) restarts from the first materialization."""
    data = json.loads(cursor) if cursor else {}
    if not isinstance(data, dict):
        return None, {}
    return data.get("after"), data.get("awaiting", {})


def _evidence(context: dg.SensorEvaluationContext, after: int | None
              ) -> tuple[dict[str, dict], int | None]:
    """The newest drift decision per batch materialized since `after`, and the new cursor."""
    from unified_assets.assets.monitoring import batch_drift

    result = context.instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=batch_drift.key, after_storage_id=after),
        limit=1000, ascending=True)
    found: dict[str, dict] = {}
    for record in result.records:
        metadata = record.asset_materialization.metadata
        if "dataset_drift" not in metadata:
            continue  # no champion to compare with when it ran
        found[record.asset_materialization.partition] = {
            "drift": bool(metadata["dataset_drift"].value),
            "champion": str(metadata["champion_version"].value),
            "columns": list(metadata["drifted_columns"].value),
            "drifted": metadata["drifted_column_count"].value
            if "drifted_column_count" in metadata else len(metadata["drifted_columns"].value),
            "total": metadata["column_count"].value if "column_count" in metadata else None,
            "run_id": record.run_id,
            "storage_id": record.storage_id,
        }
    last = result.records[-1].storage_id if result.records else after
    return found, last


def _describe(batch: str, evidence: dict) -> str:
    columns = evidence["columns"]
    shown = ", ".join(columns[:5]) + (", ..." if len(columns) > 5 else "")
    total = f"/{evidence['total']}" if evidence.get("total") else ""
    return f"{batch}: {evidence['drifted']}{total} columns ({shown})"


def build_drift_sensor(job) -> dg.SensorDefinition:
    @dg.sensor(
        name="drift_retrain_sensor",
        job=job,
        # Cheap (reads batch_drift records since its cursor, and the champion's version);
        # the first training and a retrain are asked for within a daemon loop (5 s) of their
        # evidence being recorded.
        minimum_interval_seconds=EVERY_DAEMON_LOOP_S,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="Requests train -> evaluate -> gated promotion when batch_drift finds drift "
        "(one retrain in flight, later evidence folded into the one queued), and the first "
        "training once enough labelled batches are in.",
    )
    def drift_retrain_sensor(
        context: dg.SensorEvaluationContext,
        dataset: DatasetResource,
        mlflow_registry: MlflowRegistry,
        policy: PolicyResource,
    ):
        from unified_assets.assets.labels import is_trainable

        after, awaiting = _load_cursor(context.cursor)
        found, last = _evidence(context, after)
        if not found and not awaiting:
            # Nothing to judge: the registry is asked only if a first training could be due.
            # (Its first call imports MLflow in the code server, 2.6-4 s that the daemon's other
            # sensors wait behind; the landing sensor's first tick among them.)
            wanted = policy.policy.drift.bootstrap_batches
            landed = len(context.instance.get_dynamic_partitions(BATCHES.name))
            if wanted is None or landed < wanted:
                import_client_in_background()  # the tick that asks will not wait for it
                first = ("the policy leaves a first training to a person" if wanted is None
                         else f"{landed} of {wanted} batches a first training needs have landed")
                return dg.SkipReason(f"no new batch_drift decision; {first}")
        model = dataset.spec.name
        version = mlflow_registry.alias_version(model)
        if version is None:
            return _bootstrap(context, job, policy)
        training = set(mlflow_registry.training_batches(model, version))
        candidates = {**awaiting, **found}
        drifted, waiting, stale = {}, {}, []
        for batch, evidence in candidates.items():
            if not evidence["drift"] or batch in training:
                continue
            if evidence["champion"] != version:
                stale.append(batch)  # judged against an earlier champion: batch_drift reruns
                continue
            if is_trainable(context.instance, batch):
                drifted[batch] = evidence
            else:
                waiting[batch] = evidence
        cursor = json.dumps({"after": last, "awaiting": waiting}, sort_keys=True)
        notes = ([f"drift in {sorted(waiting)} waits for their labels"] if waiting else []) + \
            ([f"evidence about an earlier champion dropped: {sorted(stale)}"] if stale else [])
        if not drifted:
            if not found and cursor == (context.cursor or ""):
                return dg.SkipReason("no new batch_drift decision")
            return dg.SensorResult(run_requests=[], cursor=cursor, skip_reason="; ".join(
                [f"{len(found)} batch_drift decision(s) read: no retrain-ready drift vs champion "
                 f"v{version}", *notes]))
        names = sorted(drifted)
        summary = "; ".join(_describe(b, drifted[b]) for b in names)
        reason = f"drift vs champion v{version} (batch_drift): {summary}"
        context.log.info(reason)
        pending = pending_run(context, job.name)
        if pending is not None:
            done = fold_into(context, pending, DRIFT_BATCHES_TAG, names, reason)
            return dg.SensorResult(run_requests=[], cursor=cursor,
                                   skip_reason="; ".join([done, *notes]))
        request = retrain_request(
            context, job.name, policy.policy.placement,
            run_key=f"drift-retrain:{','.join(names)}",
            tags={**started_because("drift", reason), DRIFT_BATCHES_TAG: ",".join(names),
                  EVIDENCE_TAG: ",".join(f"batch_drift[{b}]@{drifted[b]['run_id'][:8]}"
                                         for b in names)[:1000]})
        if isinstance(request, str):
            # The evidence is kept as awaiting: asked for again once placement allows.
            keep = json.dumps({"after": last, "awaiting": {**waiting, **drifted}}, sort_keys=True)
            return dg.SensorResult(run_requests=[], cursor=keep,
                                   skip_reason=f"drift in {names} but {request}")
        if run_in_flight(context, job.name):
            context.log.info(f"a {job.name} run is in flight; this one queues behind it")
        return dg.SensorResult(run_requests=[request], cursor=cursor)

    return drift_retrain_sensor
