"""Late labels: a labels file for an ingested batch requests its labels and the champion's
live performance on it. The cursor remembers each file's version, so a corrected file (a new
version) is used again and a replayed tick starts nothing twice."""

import json

import dagster as dg

from resources.artifact_store import ArtifactStore
from resources.dataset import DatasetResource
from unified_assets.assets.data import landed_batch, report_key


def build_labels_sensor(job) -> dg.SensorDefinition:
    @dg.sensor(
        name="labels_landing_sensor",
        job=job,
        minimum_interval_seconds=15,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="Requests labels + live performance for each batch whose labels file lands.",
    )
    def labels_landing_sensor(
        context: dg.SensorEvaluationContext, dataset: DatasetResource, store: ArtifactStore
    ) -> dg.SensorResult | dg.SkipReason:
        seen: dict[str, str] = json.loads(context.cursor or "{}")
        files = {k: f for k, f in dataset.label_files().items() if seen.get(k) != f.version}
        if not files:
            return dg.SkipReason(f"no new labels in {dataset.labels_uri}")
        ingested = set(context.instance.get_materialized_partitions(landed_batch.key))
        requests, waiting, unused = [], [], []
        for key, landed in files.items():
            if key not in ingested:
                waiting.append(key)  # its batch has not been ingested yet: look again later
                continue
            report = store.read_json(report_key(key)) if store.exists(report_key(key)) else None
            if report is None or not report["passed"] or report.get("labelled", True):
                why = "failed its checks" if report and not report["passed"] else "came labelled"
                unused.append(f"{key} ({why})")
                seen[key] = landed.version
                continue
            requests.append(dg.RunRequest(
                partition_key=key, run_key=f"labels:{key}:{landed.version}",
                tags={"unified-ai/trigger": "late-labels", "unified-ai/labels-file": landed.uri}))
            seen[key] = landed.version
        notes = ([f"labels wait for their batch: {waiting}"] if waiting else []) + \
            ([f"labels not used, the batch {', '.join(unused)}"] if unused else [])
        if unused:
            context.log.warning(notes[-1])
        return dg.SensorResult(run_requests=requests, cursor=json.dumps(seen, sort_keys=True),
                               skip_reason="; ".join(notes) if not requests else None)

    return labels_landing_sensor
