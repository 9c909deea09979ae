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
    return [job_def.execute_in_process(instance=instance, partition_key=r.partition_key,
                                       tags={**r.tags, "dagster/run_key": r.run_key},
                                       raise_on_error=False)
            for r in result.run_requests]


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
    assert [r.partition_key for r in result.run_requests] == ["batch-00000", "batch-00001"]
    assert [r.run_key for r in result.run_requests] == [
        f"ingest:{k}:{files[k].version}" for k in ("batch-00000", "batch-00001")]
    first = result.run_requests[0]
    assert first.tags["unified-ai/trigger"] == "new-batch"
    assert first.tags["unified-ai/batch-version"] == files["batch-00000"].version
    assert first.tags["unified-ai/batch-file"] == files["batch-00000"].uri
    (add_request,) = result.dynamic_partitions_requests
    assert list(add_request.partition_keys) == ["batch-00000", "batch-00001"]
    # A replayed tick asks for the same run keys, which Dagster starts only once.
    assert [r.run_key for r in tick(defs, instance).run_requests] == [r.run_key for r in result.run_requests]

    assert all(run.success for run in launch(defs, instance, result))
    assert "no new or changed batch" in skipped(tick(defs, instance, result.cursor))

    write_batches(settings.landing_dir, batches=1, rows=50, first_batch=2)
    assert [r.partition_key for r in tick(defs, instance, result.cursor).run_requests] == ["batch-00002"]


def test_files_whose_keys_used_to_collide_are_each_ingested(settings, instance):
    settings.landing_dir.mkdir(parents=True)
    for index, name in enumerate(["batch.v1.parquet", "batch.v2.parquet", "my batch.parquet",
                                  "my_batch.parquet"]):
        generate_batch(index, 40).to_parquet(settings.landing_dir / name, index=False)
    defs = build_definitions(settings)
    result = tick(defs, instance)
    keys = [r.partition_key for r in result.run_requests]
    assert len(set(keys)) == 4 and "my_batch" in keys
    assert all(run.success for run in launch(defs, instance, result))
    assert set(instance.get_materialized_partitions(dg.AssetKey("landed_batch"))) == set(keys)
    assert materialized_metadata(instance, batch_key("batch.v2.parquet"))["source_uri"].endswith(
        "/batch.v2.parquet")


def test_a_changed_file_is_ingested_again_as_a_new_version(settings, instance):
    write_batches(settings.landing_dir, batches=1, rows=50)
    defs = build_definitions(settings)
    dataset, store = defs.resources["dataset"], defs.resources["store"]
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
    assert store.read_json("batches/batch-00000.report.json")["version"] == new
    assert len(store.read_frame("batches/batch-00000.parquet")) == 80
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
    (request,) = [r for r in first.run_requests if r.partition_key == "batch-00000"]
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
                     "live_performance_sensor", "pool_limits"}
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
