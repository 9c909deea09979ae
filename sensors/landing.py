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

Throughput: a run costs seconds, a batch milliseconds, so first attempts of batches that are
next to each other in the partition order (files landed together) are requested as one run
over the partition range (at most `PARTITIONS_PER_RUN` each, more when a landing would
need more runs than the run slots: `run_size`); the asset records each batch's
materialization and checks on its own. A failed range run is retried as a range too (its
neighbouring batches due for the same attempt, tagged with the first run's chunk so every
attempt counts for each of them): an outage during a landing of 100 batches is one retry run,
not 100.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

import dagster as dg

from resources.dataset import DatasetResource
from sensors import EVERY_DAEMON_LOOP_S
from unified_assets.assets.data import PARTITIONS_PER_RUN, landed_batch
from unified_assets.partitions import BATCHES
from unified_assets.run_tags import STOPPED_TAG, TRIGGER_TAG
from unified_assets.settings import ingest_retry_backoff_s

RANGE_START = "dagster/asset_partition_range_start"
RANGE_END = "dagster/asset_partition_range_end"
CHUNK_TAG = "unified-ai/ingest-chunk"  # on range runs; the cursor remembers each batch's chunk

MAX_ATTEMPTS = 5
# Before attempt 2, doubled for each further attempt (UNIFIED_AI_INGEST_RETRY_BACKOFF_S, else 60).
RETRY_BACKOFF_SECONDS = ingest_retry_backoff_s()
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
              requested: bool, what: str, now: float, chunk: str | None = None) -> NextStep:
    """Decide from the runs carrying `tags` (one file version), and the range run `chunk` the
    version was first requested in, what comes next. Called only while that version is not
    materialized, so every finished run is a failed attempt."""
    records = list(instance.get_run_records(
        dg.RunsFilter(job_name=job_name, tags={"dagster/partition": partition, **tags})))
    if chunk:
        records += instance.get_run_records(dg.RunsFilter(job_name=job_name, tags={CHUNK_TAG: chunk}))
        records.sort(key=lambda r: r.create_timestamp, reverse=True)
    if not records:
        if requested:
            return NextStep("wait", note=f"{what}: requested, waiting for its run to start")
        return NextStep("request", 1)
    latest = records[0]
    run_id = latest.dagster_run.run_id
    if any(not r.dagster_run.is_finished for r in records):
        return NextStep("wait", note=f"{what}: run {run_id} in progress")
    failed = len(records)
    stopped = latest.dagster_run.tags.get(STOPPED_TAG)
    if latest.dagster_run.status == dg.DagsterRunStatus.CANCELED and stopped:
        # Not a person's decision: the run command stopped it, and resumes it at its next start.
        return NextStep("wait", note=f"{what}: run {run_id} was stopped by {stopped}; "
                                     "`unified-ai runs resume` (scripts/dev.sh at its next "
                                     "start) re-executes it")
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
    """key -> [version, "requested" | "done", (range run key it was first requested in)]."""
    return json.loads(cursor) if cursor else {}


def contiguous_chunks(order: list[str], wanted: set[str], size: int) -> list[list[str]]:
    """The wanted keys as runs of neighbours in partition order, at most `size` each: a
    partition range covers every key between its ends, so a key not wanted splits it."""
    chunks: list[list[str]] = []
    current: list[str] = []
    for key in order:
        if key in wanted and len(current) < size:
            current.append(key)
            continue
        if current:
            chunks.append(current)
        current = [key] if key in wanted else []
    if current:
        chunks.append(current)
    return chunks


def run_size(instance: dg.DagsterInstance, batches: int) -> int:
    """Batches per range run: at most `PARTITIONS_PER_RUN`, unless that needs more runs than
    the run slots beside one left for decisions (approvals, rollbacks, a retrain); then the
    batches are shared evenly among those slots. A run beyond the slots would wait for one,
    then run alone while the others' cores sit idle."""
    queue = instance.get_concurrency_config().run_queue_config
    limit = queue.max_concurrent_runs if queue is not None else -1
    if limit is None or limit < 0:  # no run limit: any number of runs start at once
        return PARTITIONS_PER_RUN
    slots = max(1, limit - 1)
    return max(PARTITIONS_PER_RUN, -(-batches // slots))


def range_request(chunk: list[str], versions: dict[str, str], triggers: set[str]) -> dg.RunRequest:
    """One ingestion run over `chunk` (neighbouring partitions); the run key covers every
    batch's version, so a replayed tick starts nothing twice."""
    import hashlib

    digest = hashlib.sha256(json.dumps([[k, versions[k]] for k in chunk]).encode()).hexdigest()
    run_key = f"ingest-range:{chunk[0]}..{chunk[-1]}:{digest[:16]}"
    trigger = "new-batch" if "new-batch" in triggers else "changed-batch"
    return dg.RunRequest(
        run_key=run_key,
        tags={RANGE_START: chunk[0], RANGE_END: chunk[-1], CHUNK_TAG: run_key,
              TRIGGER_TAG: trigger, ATTEMPT_TAG: "1",
              "unified-ai/batches": f"{chunk[0]} .. {chunk[-1]} ({len(chunk)} batches)"})


def retry_request(chunk: str, attempt: int, keys: list[str], files: dict) -> dg.RunRequest:
    """Attempt `attempt` of batches whose range run `chunk` failed. A lone batch gets its own
    run (counted by its partition and version); neighbours share one range run tagged with
    `chunk`, so each of its batches counts it as an attempt."""
    if len(keys) == 1:
        key, landed = keys[0], files[keys[0]]
        return dg.RunRequest(
            partition_key=key, run_key=f"ingest:{key}:{landed.version}:{attempt}",
            tags={TRIGGER_TAG: "retry", FILE_TAG: landed.uri, VERSION_TAG: landed.version,
                  ATTEMPT_TAG: str(attempt)})
    return dg.RunRequest(
        run_key=f"{chunk}:attempt-{attempt}:{keys[0]}..{keys[-1]}",
        tags={RANGE_START: keys[0], RANGE_END: keys[-1], CHUNK_TAG: chunk, TRIGGER_TAG: "retry",
              ATTEMPT_TAG: str(attempt),
              "unified-ai/batches": f"{keys[0]} .. {keys[-1]} ({len(keys)} batches)"})


def not_matching(names: list[str], pattern: str) -> str:
    """The note for files in the landing zone that are never ingested (e.g. a CSV beside
    Parquet batches): silence would read as "nothing landed"."""
    shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
    return (f"{len(names)} file(s) not ingested: their names do not match the dataset spec's "
            f"source pattern {pattern!r} ({shown})")


def build_landing_sensor(job) -> dg.SensorDefinition:
    @dg.sensor(
        name="landing_zone_sensor",
        job=job,
        # A landed batch waits for the next tick (every daemon loop, 5 s); a tick is one
        # listing of the landing zone (on S3 one LIST request per 1,000 objects) and reads
        # only files not seen before.
        minimum_interval_seconds=EVERY_DAEMON_LOOP_S,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="Adds a partition per new complete batch file and requests its ingestion; "
        "ingests a changed file again as a new version and retries failed ingestions.",
    )
    def landing_zone_sensor(
        context: dg.SensorEvaluationContext, dataset: DatasetResource
    ) -> dg.SensorResult | dg.SkipReason:
        instance, now = context.instance, time.time()
        files, unmatched = dataset.scan_batches()
        state = {k: v for k, v in load_cursor(context.cursor).items() if k in files}
        known_order = list(instance.get_dynamic_partitions(BATCHES.name))  # as added
        known = set(known_order)
        requests, notes = [], [not_matching(unmatched, dataset.spec.source.glob)] if unmatched else []
        first_attempts: dict[str, str] = {}  # key -> trigger, requested together below
        range_retries: dict[tuple[str, int], list[str]] = {}  # (chunk, attempt) -> keys
        for key, landed in files.items():
            if state.get(key) == [landed.version, DONE]:
                continue
            built = latest_metadata(instance, landed_batch.key, key) if key in known else None
            built_version = None if built is None else built.get("source_version", UNVERSIONED)
            if built_version == landed.version or (built_version == UNVERSIONED and key not in state):
                state[key] = [landed.version, DONE]  # ingested (passed or rejected by its checks)
                continue
            what = f"{key} ({landed.uri}, version {landed.version})"
            mine = state.get(key, [])[:3]
            chunk = mine[2] if len(mine) == 3 and mine[0] == landed.version else None
            step = next_step(instance, job.name, key, {VERSION_TAG: landed.version},
                             mine[:2] == [landed.version, REQUESTED], what, now, chunk)
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
                if step.attempt == 1:
                    first_attempts[key] = trigger
                    continue
                if chunk:  # failed in a range run: retried with its neighbours, below
                    range_retries.setdefault((chunk, step.attempt), []).append(key)
                    continue
                run_key = f"ingest:{key}:{landed.version}:{step.attempt}"
                requests.append(dg.RunRequest(
                    partition_key=key, run_key=run_key,
                    tags={TRIGGER_TAG: trigger, FILE_TAG: landed.uri,
                          VERSION_TAG: landed.version, ATTEMPT_TAG: str(step.attempt)}))
                state[key] = [landed.version, REQUESTED, *([chunk] if chunk else [])]
                continue
            notes.append(step.note)
        order = known_order + sorted(k for k in files if k not in known)
        size = run_size(instance, len(first_attempts))
        for chunk_keys in contiguous_chunks(order, set(first_attempts), size):
            if len(chunk_keys) == 1:  # one batch: the same run as before, tagged with its file
                key = chunk_keys[0]
                landed = files[key]
                requests.append(dg.RunRequest(
                    partition_key=key, run_key=f"ingest:{key}:{landed.version}",
                    tags={TRIGGER_TAG: first_attempts[key], FILE_TAG: landed.uri,
                          VERSION_TAG: landed.version, ATTEMPT_TAG: "1"}))
                state[key] = [landed.version, REQUESTED]
                continue
            request = range_request(chunk_keys, {k: files[k].version for k in chunk_keys},
                                    {first_attempts[k] for k in chunk_keys})
            requests.append(request)
            for key in chunk_keys:
                state[key] = [files[key].version, REQUESTED, request.run_key]
        for (chunk, attempt), keys in sorted(range_retries.items()):
            for retry_keys in contiguous_chunks(order, set(keys), PARTITIONS_PER_RUN):
                requests.append(retry_request(chunk, attempt, retry_keys, files))
                for key in retry_keys:
                    state[key] = [files[key].version, REQUESTED, chunk]
        new = sorted(key for key in files if key not in known)  # in `order`'s order
        cursor = json.dumps(state, sort_keys=True)
        skip = "; ".join([f"no new or changed batch in {dataset.source_uri} ({len(files)} files)",
                          *notes])
        if requests and unmatched:
            context.log.warning(notes[0])
        if not requests and not new and cursor == (context.cursor or "{}"):
            return dg.SkipReason(skip)
        return dg.SensorResult(
            run_requests=requests, cursor=cursor,
            dynamic_partitions_requests=[BATCHES.build_add_request(new)] if new else [],
            skip_reason=None if requests else skip,
        )

    return landing_zone_sensor
