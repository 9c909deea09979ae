"""New data: each complete file in the landing zone becomes a batch partition and is ingested,
and ingested again, as a new version, whenever its content changes (size and modification
time locally, the ETag on S3).

What the sensor knows comes from the instance: the dynamic partitions (keys seen), the
latest materialization of each partition (the file version it was built from) and the runs
tagged with a version (its attempts). The cursor only remembers, per key, the version last
requested or settled, so a quiet tick reads nothing and a replayed tick starts nothing twice
(run keys carry the version and the attempt). An ingestion run that failed without storing
the batch (disk full, an outage) is retried with backoff, a bounded number of times, and the
tick says so.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

import dagster as dg

from resources.dataset import DatasetResource
from unified_assets.assets.data import landed_batch
from unified_assets.partitions import BATCHES

MAX_ATTEMPTS = 5
RETRY_BACKOFF_SECONDS = 60.0  # before attempt 2; doubled for each further attempt
VERSION_TAG = "unified-ai/batch-version"
FILE_TAG = "unified-ai/batch-file"
ATTEMPT_TAG = "unified-ai/attempt"
UNVERSIONED = "unversioned"  # materialized before file versions were recorded
REQUESTED, DONE = "requested", "done"


@dataclass(frozen=True)
class NextStep:
    """What to do about one version of one file: request attempt `attempt`, wait or give up."""

    action: str
    attempt: int = 1
    note: str = ""


def latest_metadata(instance: dg.DagsterInstance, asset_key: dg.AssetKey,
                    partition: str) -> dict[str, str] | None:
    """The text metadata of the partition's latest materialization; None if there is none."""
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=asset_key, asset_partitions=[partition]), limit=1).records
    if not records:
        return None
    return {k: str(v.value) for k, v in records[0].asset_materialization.metadata.items()}


def next_step(instance: dg.DagsterInstance, job_name: str, partition: str, tags: dict[str, str],
              requested: bool, what: str, now: float) -> NextStep:
    """Decide from the runs carrying `tags` (one file version) what comes next. Called only
    while that version is not materialized, so every finished run is a failed attempt."""
    records = instance.get_run_records(
        dg.RunsFilter(job_name=job_name, tags={"dagster/partition": partition, **tags}))
    if not records:
        if requested:
            return NextStep("wait", note=f"{what}: requested, waiting for its run to start")
        return NextStep("request", 1)
    latest = records[0]
    run_id = latest.dagster_run.run_id
    if any(not r.dagster_run.is_finished for r in records):
        return NextStep("wait", note=f"{what}: run {run_id} in progress")
    failed = len(records)
    if latest.dagster_run.status == dg.DagsterRunStatus.CANCELED:
        return NextStep("give_up", note=f"gave up on {what}: run {run_id} was canceled; re-land "
                                        "the file or launch the run from the UI")
    if failed >= MAX_ATTEMPTS:
        return NextStep("give_up", note=f"gave up on {what} after {failed} failed ingestion "
                                        f"attempts (last run {run_id}); fix the cause, then "
                                        "re-land the file or launch the run from the UI")
    ended = latest.end_time or latest.update_timestamp.timestamp()
    due = ended + RETRY_BACKOFF_SECONDS * 2 ** (failed - 1)
    if now < due:
        return NextStep("wait", note=f"{what}: attempt {failed} failed (run {run_id}); "
                                     f"attempt {failed + 1} in {due - now:.0f}s")
    return NextStep("request", failed + 1,
                    note=f"{what}: attempt {failed} failed (run {run_id}); retrying, attempt "
                         f"{failed + 1} of {MAX_ATTEMPTS}")


def load_cursor(cursor: str | None) -> dict[str, list[str]]:
    """key -> [version, "requested" | "done"]."""
    return json.loads(cursor) if cursor else {}


def build_landing_sensor(job) -> dg.SensorDefinition:
    @dg.sensor(
        name="landing_zone_sensor",
        job=job,
        minimum_interval_seconds=15,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="Adds a partition per new complete batch file and requests its ingestion; "
        "ingests a changed file again as a new version and retries failed ingestions.",
    )
    def landing_zone_sensor(
        context: dg.SensorEvaluationContext, dataset: DatasetResource
    ) -> dg.SensorResult | dg.SkipReason:
        instance, now = context.instance, time.time()
        files = dataset.batch_files()
        state = {k: v for k, v in load_cursor(context.cursor).items() if k in files}
        known = set(instance.get_dynamic_partitions(BATCHES.name))
        requests, notes = [], []
        for key, landed in files.items():
            if state.get(key) == [landed.version, DONE]:
                continue
            built = latest_metadata(instance, landed_batch.key, key) if key in known else None
            built_version = None if built is None else built.get("source_version", UNVERSIONED)
            if built_version == landed.version or (built_version == UNVERSIONED and key not in state):
                state[key] = [landed.version, DONE]  # ingested (passed or rejected by its checks)
                continue
            what = f"{key} ({landed.uri}, version {landed.version})"
            step = next_step(instance, job.name, key, {VERSION_TAG: landed.version},
                             state.get(key) == [landed.version, REQUESTED], what, now)
            if step.action == "give_up":
                context.log.error(step.note)
                state[key] = [landed.version, DONE]
            elif step.action == "wait":
                context.log.info(step.note)
            else:
                if step.note:
                    context.log.warning(step.note)
                trigger = "retry" if step.attempt > 1 else \
                    "new-batch" if built_version is None else "changed-batch"
                run_key = f"ingest:{key}:{landed.version}" + \
                    (f":{step.attempt}" if step.attempt > 1 else "")
                requests.append(dg.RunRequest(
                    partition_key=key, run_key=run_key,
                    tags={"unified-ai/trigger": trigger, FILE_TAG: landed.uri,
                          VERSION_TAG: landed.version, ATTEMPT_TAG: str(step.attempt)}))
                state[key] = [landed.version, REQUESTED]
                continue
            notes.append(step.note)
        new = [key for key in files if key not in known]
        cursor = json.dumps(state, sort_keys=True)
        skip = "; ".join([f"no new or changed batch in {dataset.source_uri} ({len(files)} files)",
                          *notes])
        if not requests and not new and cursor == (context.cursor or "{}"):
            return dg.SkipReason(skip)
        return dg.SensorResult(
            run_requests=requests, cursor=cursor,
            dynamic_partitions_requests=[BATCHES.build_add_request(new)] if new else [],
            skip_reason=None if requests else skip,
        )

    return landing_zone_sensor
