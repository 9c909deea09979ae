import dagster as dg

from unified_assets.definitions import build_definitions
from unified_assets.ml.generator import write_batches
from unified_assets.partitions import BATCHES


def _tick(defs, instance, cursor=None):
    sensor = defs.resolve_sensor_def("landing_zone_sensor")
    context = dg.build_sensor_context(instance=instance, cursor=cursor, definitions=defs,
                                      resources={"dataset": defs.resources["dataset"]})
    return sensor(context)


def test_new_complete_files_become_partitions_with_one_ingestion_each(settings, instance):
    write_batches(settings.landing_dir, batches=2, rows=50)
    (settings.landing_dir / ".batch-00002.parquet.partial").write_bytes(b"half a file")
    defs = build_definitions(settings)

    result = _tick(defs, instance)
    assert [r.partition_key for r in result.run_requests] == ["batch-00000", "batch-00001"]
    assert [r.run_key for r in result.run_requests] == ["ingest:batch-00000", "ingest:batch-00001"]
    assert result.run_requests[0].tags["unified-ai/trigger"] == "new-batch"
    (add_request,) = result.dynamic_partitions_requests
    assert list(add_request.partition_keys) == ["batch-00000", "batch-00001"]

    instance.add_dynamic_partitions(BATCHES.name, list(add_request.partition_keys))
    skipped = _tick(defs, instance)
    assert isinstance(skipped, dg.SkipReason) and "no new batch" in skipped.skip_message

    write_batches(settings.landing_dir, batches=1, rows=50, first_batch=2)
    assert [r.partition_key for r in _tick(defs, instance).run_requests] == ["batch-00002"]


def test_sensors_default_to_running(settings):
    defs = build_definitions(settings)
    names = {s.name for s in defs.sensors}
    assert names == {"landing_zone_sensor", "lifecycle_automation", "approval_decisions_sensor",
                     "drift_retrain_sensor", "run_failure_incidents", "labels_landing_sensor",
                     "live_performance_sensor"}
    for name in names:
        assert defs.resolve_sensor_def(name).default_status == dg.DefaultSensorStatus.RUNNING
