"""Late labels: a labels file for an ingested batch requests its labels and the champion's
live performance on it. A labels file is matched again when it changes (a corrected file)
and when its batch is re-landed as a new version (labels match one version of the rows).
The cursor remembers, per batch, the labels and batch versions last requested or settled;
run keys carry both, so a replayed tick starts nothing twice; a run that failed without
storing the labels is retried like an ingestion (see `sensors.landing`)."""

import json
import time

import dagster as dg

from resources.dataset import DatasetResource
from sensors.landing import DONE, REQUESTED, UNVERSIONED, latest_metadata, next_step
from unified_assets.assets.data import batch_record, landed_batch
from unified_assets.assets.labels import batch_labels
from unified_assets.run_tags import TRIGGER_TAG

LABELS_VERSION_TAG = "unified-ai/labels-version"
BATCH_VERSION_TAG = "unified-ai/batch-version"
ATTEMPT_TAG = "unified-ai/attempt"


def _state(value) -> list[str]:
    """[labels@batch version, state]; a cursor written before batch versions held the labels
    version alone, which stands for an unversioned batch."""
    return value if isinstance(value, list) else [f"{value}@{UNVERSIONED}", DONE]


def build_labels_sensor(job) -> dg.SensorDefinition:
    @dg.sensor(
        name="labels_landing_sensor",
        job=job,
        minimum_interval_seconds=15,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="Requests labels + live performance for each batch whose labels file lands "
        "or changes, or whose batch is re-landed; retries failed label runs.",
    )
    def labels_landing_sensor(
        context: dg.SensorEvaluationContext, dataset: DatasetResource
    ) -> dg.SensorResult | dg.SkipReason:
        instance, now = context.instance, time.time()
        previous = json.loads(context.cursor or "{}")
        files = dataset.label_files()
        state = {k: _state(v) for k, v in previous.items() if k in files}
        ingested = set(instance.get_materialized_partitions(landed_batch.key))
        requests, waiting, unused, notes = [], [], [], []
        for key, landed in files.items():
            # What the batch's latest materialization says (never files beside the data).
            record = batch_record(instance, key) if key in ingested else None
            if record is None:
                waiting.append(key)  # its batch is not ingested yet: look again later
                continue
            batch_version = record.version or UNVERSIONED
            pair = f"{landed.version}@{batch_version}"
            if state.get(key) == [pair, DONE]:
                continue
            if not record.passed or record.labelled:
                why = "failed its checks" if not record.passed else "came labelled"
                unused.append(f"{key} ({why})")
                state[key] = [pair, DONE]
                continue
            built = latest_metadata(instance, batch_labels.key, key) or {}
            if (built.get("labels_version"), built.get("batch_version")) == \
                    (landed.version, str(record.version)):
                state[key] = [pair, DONE]  # matched (stored, or rejected by its check)
                continue
            tags = {LABELS_VERSION_TAG: landed.version, BATCH_VERSION_TAG: batch_version}
            what = f"labels of {key} ({landed.uri}, version {landed.version})"
            step = next_step(instance, job.name, key, tags, state.get(key) == [pair, REQUESTED],
                             what, now)
            if step.action == "give_up":
                context.log.error(step.note)
                state[key] = [pair, DONE]
            elif step.action == "wait":
                context.log.info(step.note)
            else:
                if step.note:
                    context.log.warning(step.note)
                run_key = f"labels:{key}:{landed.version}:{batch_version}" + \
                    (f":{step.attempt}" if step.attempt > 1 else "")
                requests.append(dg.RunRequest(
                    partition_key=key, run_key=run_key,
                    tags={TRIGGER_TAG: "late-labels" if step.attempt == 1 else "retry",
                          "unified-ai/labels-file": landed.uri, ATTEMPT_TAG: str(step.attempt),
                          **tags}))
                state[key] = [pair, REQUESTED]
                continue
            notes.append(step.note)
        notes = ([f"labels wait for their batch: {waiting}"] if waiting else []) + \
            ([f"labels not used, the batch {', '.join(unused)}"] if unused else []) + notes
        if unused:
            context.log.warning(f"labels not used, the batch {', '.join(unused)}")
        skip = "; ".join(notes) or f"no new or changed labels in {dataset.labels_uri}"
        cursor = json.dumps(state, sort_keys=True)
        if not requests and cursor == json.dumps(previous, sort_keys=True):
            return dg.SkipReason(skip)
        return dg.SensorResult(run_requests=requests, cursor=cursor,
                               skip_reason=None if requests else skip)

    return labels_landing_sensor
