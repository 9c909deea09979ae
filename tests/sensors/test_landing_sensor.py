"""The landing sensor: every complete file becomes a partition and is ingested, again as a new
version whenever its content changes; run keys carry the version so a replayed tick starts
nothing twice."""

import dagster as dg

from resources.dataset import batch_key
from unified_assets.definitions import build_definitions
from unified_assets.ml.generator import generate_batch, write_batches
from unified_assets.partitions import BATCHES


def tick(defs, instance, cursor=None, name="landing_zone_sensor"):
    sensor = defs.resolve_sensor_def(name)
    resources = {"dataset": defs.resources["dataset"], "store": defs.resources["store"]}
    with dg.build_sensor_context(instance=instance, cursor=cursor, definitions=defs,
                                 resources=resources) as context:
        return sensor(context)


def skipped(result) -> str:
    """The reason a tick that requested nothing gives (it still moves its cursor)."""
    if isinstance(result, dg.SkipReason):
        return result.skip_message
    assert not result.run_requests, [r.run_key for r in result.run_requests]
    return result.skip_reason.skip_message


def launch(defs, instance, result, job="ingest_batch", asset_selection=None):
    """What the daemon does with a tick's result: add partitions, run each request."""
    for request in result.dynamic_partitions_requests or []:
        instance.add_dynamic_partitions(BATCHES.name, list(request.partition_keys))
    job_def = defs.resolve_job_def(job)
    if asset_selection:
        job_def = job_def.get_subset(asset_selection=asset_selection)
    # A range request carries its range in tags; a single one names its partition.
    return [job_def.execute_in_process(instance=instance, partition_key=r.partition_key,
                                       tags={**r.tags, "dagster/run_key": r.run_key},
                                       raise_on_error=False)
            for r in result.run_requests]


def requested_keys(result) -> list[str]:
    """Every batch the tick asked to ingest, single requests and ranges alike."""
    keys = []
    for request in result.run_requests:
        if request.partition_key:
            keys.append(request.partition_key)
        else:
            order = [k for r in result.dynamic_partitions_requests or [] for k in r.partition_keys]
            span = request.partition_key_range
            keys += order[order.index(span.start):order.index(span.end) + 1]
    return keys


def materialized_metadata(instance, key):
    (record,) = instance.fetch_materializations(dg.AssetRecordsFilter(
        asset_key=dg.AssetKey("landed_batch"), asset_partitions=[key]), limit=1).records
    return {k: v.value for k, v in record.asset_materialization.metadata.items()}


def test_new_complete_files_become_partitions_with_one_ingestion_each(settings, instance):
    write_batches(settings.landing_dir, batches=2, rows=50)
    (settings.landing_dir / ".batch-00002.parquet.partial").write_bytes(b"half a file")
    defs = build_definitions(settings)
    files = defs.resources["dataset"].batch_files()

    result = tick(defs, instance)
    # Files landed together are ingested in one run over their partition range.
    (first,) = result.run_requests
    assert first.partition_key_range == dg.PartitionKeyRange("batch-00000", "batch-00001")
    assert first.run_key.startswith("ingest-range:batch-00000..batch-00001:")
    assert first.tags["unified-ai/trigger"] == "new-batch"
    assert first.tags["unified-ai/batches"] == "batch-00000 .. batch-00001 (2 batches)"
    assert files  # versions are recorded per batch by the asset (source_version)
    (add_request,) = result.dynamic_partitions_requests
    assert list(add_request.partition_keys) == ["batch-00000", "batch-00001"]
    # A replayed tick asks for the same run keys, which Dagster starts only once.
    assert [r.run_key for r in tick(defs, instance).run_requests] == [r.run_key for r in result.run_requests]

    assert all(run.success for run in launch(defs, instance, result))
    assert materialized_metadata(instance, "batch-00001")["source_version"] == \
        files["batch-00001"].version
    assert "no new or changed batch" in skipped(tick(defs, instance, result.cursor))

    write_batches(settings.landing_dir, batches=1, rows=50, first_batch=2)
    (one,) = tick(defs, instance, result.cursor).run_requests
    assert one.partition_key == "batch-00002"  # a lone batch: a single-partition run
    version = defs.resources["dataset"].batch_files()["batch-00002"].version
    assert one.run_key == f"ingest:batch-00002:{version}"
    assert one.tags["unified-ai/batch-file"].endswith("batch-00002.parquet")


def test_files_whose_keys_used_to_collide_are_each_ingested(settings, instance):
    settings.landing_dir.mkdir(parents=True)
    for index, name in enumerate(["batch.v1.parquet", "batch.v2.parquet", "my batch.parquet",
                                  "my_batch.parquet"]):
        generate_batch(index, 40).to_parquet(settings.landing_dir / name, index=False)
    defs = build_definitions(settings)
    result = tick(defs, instance)
    keys = requested_keys(result)
    assert len(set(keys)) == 4 and "my_batch" in keys
    assert all(run.success for run in launch(defs, instance, result))
    assert set(instance.get_materialized_partitions(dg.AssetKey("landed_batch"))) == set(keys)
    assert materialized_metadata(instance, batch_key("batch.v2.parquet"))["source_uri"].endswith(
        "/batch.v2.parquet")


def test_a_changed_file_is_ingested_again_as_a_new_version(settings, instance):
    write_batches(settings.landing_dir, batches=1, rows=50)
    defs = build_definitions(settings)
    dataset = defs.resources["dataset"]
    first = tick(defs, instance)
    assert all(run.success for run in launch(defs, instance, first))
    old = dataset.batch_files()["batch-00000"].version
    assert materialized_metadata(instance, "batch-00000")["source_version"] == old

    generate_batch(7, 80).to_parquet(settings.landing_dir / "batch-00000.parquet", index=False)
    new = dataset.batch_files()["batch-00000"].version
    assert new != old
    second = tick(defs, instance, first.cursor)
    (request,) = second.run_requests
    assert request.run_key == f"ingest:batch-00000:{new}"
    assert request.tags["unified-ai/batch-version"] == new
    assert request.tags["unified-ai/trigger"] == "changed-batch"
    assert not second.dynamic_partitions_requests or not list(
        second.dynamic_partitions_requests[0].partition_keys)
    (run,) = launch(defs, instance, second)
    assert run.success
    assert materialized_metadata(instance, "batch-00000")["source_version"] == new
    values = defs.resources["values_io_manager"]
    assert len(values.load(dg.AssetKey("landed_batch"), "batch-00000")) == 80
    assert "no new or changed batch" in skipped(tick(defs, instance, second.cursor))


def test_a_file_read_while_still_being_copied_is_ingested_once_complete(settings, instance):
    settings.landing_dir.mkdir(parents=True)
    complete = settings.landing_dir / "complete.parquet"
    generate_batch(0, 60).to_parquet(complete, index=False)
    content = complete.read_bytes()
    target = settings.landing_dir / "batch-00000.parquet"
    target.write_bytes(content[: len(content) // 2])  # copied under its final name, half way
    defs = build_definitions(settings)
    first = tick(defs, instance)
    (request,) = first.run_requests
    assert "batch-00000" in requested_keys(first)
    launch(defs, instance, first)
    assert materialized_metadata(instance, "batch-00000")["passed_quality_checks"] is False
    skipped(tick(defs, instance, first.cursor))  # rejected by its checks: nothing to retry

    target.write_bytes(content)  # the copy completes
    (again,) = [r for r in tick(defs, instance, first.cursor).run_requests
                if r.partition_key == "batch-00000"]
    assert again.run_key != request.run_key
    runs = launch(defs, instance, dg.SensorResult(run_requests=[again]))
    assert runs[0].success
    assert materialized_metadata(instance, "batch-00000")["passed_quality_checks"] is True


def test_a_file_that_changes_while_it_is_read_fails_the_run_and_is_ingested_again(
        settings, instance, monkeypatch):
    import unified_assets.assets.data as data

    write_batches(settings.landing_dir, batches=1, rows=50)
    path = settings.landing_dir / "batch-00000.parquet"
    defs = build_definitions(settings)
    first = tick(defs, instance)
    real_validate = data.validate_batch_file

    def validate_while_the_copy_goes_on(file, spec):
        report = real_validate(file, spec)
        generate_batch(3, 70).to_parquet(path, index=False)
        return report

    monkeypatch.setattr(data, "validate_batch_file", validate_while_the_copy_goes_on)
    (run,) = launch(defs, instance, first)
    assert not run.success
    failure = next(e for e in run.all_events if e.is_step_failure)
    assert "changed while it was read" in failure.event_specific_data.error.message
    assert str(path) in failure.event_specific_data.error.message
    assert not instance.get_materialized_partitions(dg.AssetKey("landed_batch"))

    monkeypatch.undo()
    (request,) = tick(defs, instance, first.cursor).run_requests
    assert request.tags["unified-ai/batch-version"] == defs.resources["dataset"].batch_files()[
        "batch-00000"].version
    assert launch(defs, instance, dg.SensorResult(run_requests=[request]))[0].success


def test_sensors_default_to_running(settings):
    defs = build_definitions(settings)
    names = {s.name for s in defs.sensors}
    assert names == {"landing_zone_sensor", "lifecycle_automation", "approval_decisions_sensor",
                     "drift_retrain_sensor", "run_failure_incidents", "labels_landing_sensor",
                     "live_performance_sensor", "pool_limits", "report_automation",
                     "serving_follows_champion", "serving_scaling", "support_backlog_sensor"}
    for name in names:
        assert defs.resolve_sensor_def(name).default_status == dg.DefaultSensorStatus.RUNNING


def test_an_ingestion_a_person_canceled_is_reported_not_retried(settings, instance):
    write_batches(settings.landing_dir, batches=1, rows=30)
    defs = build_definitions(settings)
    first = tick(defs, instance)
    (request,) = first.run_requests
    instance.add_dynamic_partitions(BATCHES.name, ["batch-00000"])
    run = instance.create_run_for_job(defs.resolve_job_def("ingest_batch"),
                                      tags={**request.tags, "dagster/partition": "batch-00000"})
    instance.report_run_canceled(run)
    message = skipped(tick(defs, instance, first.cursor))
    assert "gave up on batch-00000" in message and "was canceled" in message


def test_an_ingestion_the_run_command_stopped_waits_for_its_resumption_not_given_up(
        settings, instance):
    # Ctrl-C on scripts/dev.sh cancels the runs in progress, tagged why, and its next start
    # re-executes them (unified_assets/run_stop.py): the batch is not given up meanwhile.
    from unified_assets.run_tags import STOPPED_TAG

    write_batches(settings.landing_dir, batches=1, rows=30)
    defs = build_definitions(settings)
    first = tick(defs, instance)
    (request,) = first.run_requests
    instance.add_dynamic_partitions(BATCHES.name, ["batch-00000"])
    run = instance.create_run_for_job(
        defs.resolve_job_def("ingest_batch"),
        tags={**request.tags, "dagster/partition": "batch-00000",
              STOPPED_TAG: "scripts/dev.sh (Ctrl-C at 2026-12-04T13:00:00Z)"})
    instance.report_run_canceled(run)
    result = tick(defs, instance, first.cursor)
    message = skipped(result)
    assert "gave up" not in message, message
    assert "batch-00000" in message and "stopped by scripts/dev.sh (Ctrl-C" in message, message
    assert "runs resume" in message, message
    # Still waiting on the next tick: nothing requested twice, nothing given up.
    cursor = first.cursor if isinstance(result, dg.SkipReason) else result.cursor
    assert "gave up" not in skipped(tick(defs, instance, cursor))


def test_many_landed_batches_are_ingested_in_chunks_and_a_failed_chunk_is_retried_as_one(
        settings, instance, monkeypatch):
    """500 files are 5 runs, not 500; a chunk that fails without storing its batches is
    retried after the backoff as one range run again (an outage is not one retry per batch),
    each attempt counted for every batch of it, until the attempts run out."""
    import sensors.landing as landing

    monkeypatch.setattr(landing, "PARTITIONS_PER_RUN", 2)
    write_batches(settings.landing_dir, batches=5, rows=30)
    defs = build_definitions(settings)
    first = tick(defs, instance)
    spans = [(r.partition_key_range.start, r.partition_key_range.end)
             for r in first.run_requests if r.partition_key_range]
    assert spans == [("batch-00000", "batch-00001"), ("batch-00002", "batch-00003")]
    assert [r.partition_key for r in first.run_requests if r.partition_key] == ["batch-00004"]
    assert requested_keys(first) == [f"batch-{i:05d}" for i in range(5)]
    # Replayed: the same run keys.
    assert [r.run_key for r in tick(defs, instance).run_requests] == \
        [r.run_key for r in first.run_requests]

    runs = launch(defs, instance, dg.SensorResult(
        run_requests=first.run_requests[1:], dynamic_partitions_requests=
        first.dynamic_partitions_requests))
    assert all(run.success for run in runs)
    # The first chunk never ran: its batches wait for it.
    waiting = tick(defs, instance, first.cursor)
    assert "requested, waiting for its run to start" in skipped(waiting)

    # It fails (an outage) without storing anything, twice: after the backoff the two batches
    # are retried together, one range run per attempt.
    import unified_assets.assets.data as data

    def outage(*_args, **_kwargs):
        raise OSError("landing zone unreachable")

    monkeypatch.setattr(landing, "RETRY_BACKOFF_SECONDS", 0.0)
    monkeypatch.setattr(data, "validate_batch_file", outage)
    (failed,) = launch(defs, instance, dg.SensorResult(run_requests=first.run_requests[:1]))
    assert not failed.success
    cursor = waiting.cursor
    for attempt in (2, 3):
        retry = tick(defs, instance, cursor)
        (request,) = retry.run_requests
        assert (request.partition_key_range.start, request.partition_key_range.end,
                request.tags["unified-ai/attempt"], request.tags["unified-ai/trigger"]) == (
            "batch-00000", "batch-00001", str(attempt), "retry")
        assert request.tags[landing.CHUNK_TAG] == first.run_requests[0].run_key
        # Replayed: the same run key, distinct from every other attempt's.
        assert [r.run_key for r in tick(defs, instance, cursor).run_requests] == [request.run_key]
        assert request.run_key != first.run_requests[0].run_key
        cursor = retry.cursor
        if attempt == 2:
            (again,) = launch(defs, instance, retry)
            assert not again.success
    monkeypatch.undo()  # the landing zone is back: attempt 3 ingests both
    monkeypatch.setattr(landing, "RETRY_BACKOFF_SECONDS", 0.0)
    (ok,) = launch(defs, instance, retry)
    assert ok.success
    assert instance.get_materialized_partitions(dg.AssetKey("landed_batch")) == {
        f"batch-{i:05d}" for i in range(5)}
    assert "no new or changed batch" in skipped(tick(defs, instance, retry.cursor))


def test_a_chunk_that_keeps_failing_is_given_up_after_the_attempts_for_every_batch(
        settings, instance, monkeypatch):
    import sensors.landing as landing
    import unified_assets.assets.data as data

    monkeypatch.setattr(landing, "RETRY_BACKOFF_SECONDS", 0.0)
    monkeypatch.setattr(landing, "MAX_ATTEMPTS", 2)
    write_batches(settings.landing_dir, batches=2, rows=30)
    defs = build_definitions(settings)

    def outage(*_args, **_kwargs):
        raise OSError("landing zone unreachable")

    monkeypatch.setattr(data, "validate_batch_file", outage)
    result = tick(defs, instance)
    for _ in range(2):
        (run,) = launch(defs, instance, result)
        assert not run.success
        result = tick(defs, instance, result.cursor)
    assert result.run_requests == []
    assert instance.get_materialized_partitions(dg.AssetKey("landed_batch")) == set()


def test_a_file_the_spec_does_not_match_is_named_not_silently_skipped(settings, instance):
    """Found: a CSV dropped beside the Parquet batches was ignored with no word ("no new or
    changed batch ... (13 files)")."""
    write_batches(settings.landing_dir, batches=1, rows=50)
    generate_batch(20, 50).to_csv(settings.landing_dir / "batch-00020.csv", index=False)
    (settings.landing_dir / "notes.txt").write_text("not a batch")
    defs = build_definitions(settings)
    note = ("2 file(s) not ingested: their names do not match the dataset spec's source "
            "pattern '*.parquet' (batch-00020.csv, notes.txt)")

    first = tick(defs, instance)
    assert requested_keys(first) == ["batch-00000"]  # the batch is ingested as before
    launch(defs, instance, first)
    quiet = tick(defs, instance, cursor=first.cursor)
    assert note in skipped(quiet), skipped(quiet)
    assert "no new or changed batch" in skipped(quiet)
    assert instance.get_dynamic_partitions(BATCHES.name) == ["batch-00000"]
    assert (settings.landing_dir / "batch-00020.csv").exists()  # left where it was


def test_a_landing_is_split_into_as_many_range_runs_as_run_slots_allow(settings, monkeypatch):
    """Found in the landing benchmark: 500 batches in runs of 100 were 5 runs for 4 run slots,
    and the fifth waited for a slot, then ran alone on a core. Runs are at most
    PARTITIONS_PER_RUN batches unless that would need more runs than the slots left beside
    one kept for decisions; then the batches are shared evenly among those."""
    import sensors.landing as landing
    from tests.instances import LOCAL_EVENT_LOG

    monkeypatch.setattr(landing, "PARTITIONS_PER_RUN", 2)
    write_batches(settings.landing_dir, batches=7, rows=30)
    defs = build_definitions(settings)
    overrides = {**LOCAL_EVENT_LOG, "concurrency": {"runs": {"max_concurrent_runs": 3}}}
    with dg.instance_for_test(overrides=overrides) as instance:
        first = tick(defs, instance)
    spans = [(r.partition_key_range.start, r.partition_key_range.end)
             for r in first.run_requests]
    assert spans == [("batch-00000", "batch-00003"), ("batch-00004", "batch-00006")]
