"""Queues sized to the work: one pool per kind of work with slots from the machine, decisions
ahead of training, and every run (automation included) saying why it started."""

import json
from pathlib import Path

import dagster as dg
import pytest
import yaml

import unified_assets.placement.probe as probe
from unified_assets.compute import (
    CPU_LIGHT,
    CPU_REPORT,
    CPU_TRAINING,
    GPU_TRAINING,
    cluster_pool_slots,
    pool_slots,
    ray_pool_slots,
)
from unified_assets.definitions import build_definitions
from unified_assets.placement.snapshot import CudaDevice
from unified_assets.run_tags import REPORT_QUEUE, RUN_QUEUE_TAG


def _pool(defs: dg.Definitions, asset: str) -> str | None:
    return defs.resolve_assets_def(asset).op.pool


def test_each_kind_of_work_has_its_own_pool(settings):
    defs = build_definitions(settings)
    assert {CPU_LIGHT.pool, CPU_TRAINING.pool, GPU_TRAINING.pool, CPU_REPORT.pool} == \
        {"light-pool", "cpu-pool", "gpu-pool", "report-pool"}
    for light in ("landed_batch", "batch_drift", "approval", "production_model"):
        assert _pool(defs, light) == "light-pool", light
    # Evidently's reports keep a core busy for seconds each: not light work, and never in the
    # pool that ingestion, judgement and decisions wait on.
    for report in ("drift_report", "quality_report_sklearn", "quality_report_torch"):
        assert _pool(defs, report) == "report-pool", report
        assert defs.resolve_assets_def(report).op.tags["unified-ai/profile"] == "cpu-report"
    assert _pool(defs, "model_sklearn") == "cpu-pool"
    assert _pool(defs, "model_torch") == "gpu-pool"


def test_slots_follow_the_machine():
    # Light steps ask for half a core, CPU training for two, GPU training for one device;
    # without a GPU the GPU pool keeps one slot for its CPU fallback.
    # Reports take a core each and leave one to the lifecycle (at least one report slot).
    assert pool_slots(2, 0) == {"light-pool": 4, "cpu-pool": 1, "gpu-pool": 1, "report-pool": 1}
    assert pool_slots(16, 2) == {"light-pool": 32, "cpu-pool": 8, "gpu-pool": 2,
                                 "report-pool": 15}
    assert pool_slots(1, 0)["cpu-pool"] == 1
    assert pool_slots(1, 0)["report-pool"] == 1
    assert ray_pool_slots(4.0, 1.0)["report-pool"] == 3
    assert set(cluster_pool_slots(0, 0)) == set(pool_slots(2, 0))


def _limits(instance: dg.DagsterInstance) -> dict[str, int]:
    return {p.name: p.limit for p in instance.event_log_storage.get_pool_limits()
            if not p.from_default}


@pytest.fixture
def eight_cores_two_gpus(monkeypatch):
    gpus = (CudaDevice(0, "test", 16000, 16000), CudaDevice(1, "test", 16000, 16000))
    monkeypatch.setattr(probe, "usable_cpus", lambda: 8)
    monkeypatch.setattr(probe, "probe_cuda", lambda: (gpus, ""))


def _pool_tick(defs, instance, cursor=None):
    sensor = defs.resolve_sensor_def("pool_limits")
    return sensor(dg.build_sensor_context(instance=instance, cursor=cursor, definitions=defs,
                                          resources={"policy": defs.resources["policy"]}))


def test_pool_limits_sensor_sizes_the_instance_pools_and_respects_an_operator(
        settings, instance, eight_cores_two_gpus):
    defs = build_definitions(settings)
    first = _pool_tick(defs, instance)
    derived = {"light-pool": 16, "cpu-pool": 4, "gpu-pool": 2, "report-pool": 7}
    assert _limits(instance) == derived
    # The cursor holds the limits the sensor set (and so owns); no run is ever requested.
    assert json.loads(first.cursor) == derived
    assert not first.run_requests
    # An operator lowers the GPU pool by hand: the next tick keeps it and says so.
    instance.event_log_storage.set_concurrency_slots("gpu-pool", 1)
    second = _pool_tick(defs, instance, first.cursor)
    assert _limits(instance)["gpu-pool"] == 1
    # Kept as the operator set it: no longer the sensor's own, the other pools still are.
    assert json.loads(second.cursor) == {"light-pool": 16, "cpu-pool": 4, "report-pool": 7}
    # Pools reset (a fresh instance, a deleted limit): set again.
    instance.event_log_storage.delete_concurrency_limit("cpu-pool")
    _pool_tick(defs, instance, second.cursor)
    assert _limits(instance)["cpu-pool"] == 4


def test_a_rollback_goes_ahead_of_training(settings, instance):
    """Decision runs carry the run priority (dequeued first, and added to their steps' pool
    claims) and their step takes a light-pool slot, so a full training pool never holds them."""
    defs = build_definitions(settings)
    for job in ("rollback_production", "approve_or_reject"):
        # Run tags of every launch (launchpad, sensor, CLI) start from the job's run tags.
        assert int(defs.resolve_job_def(job).run_tags["dagster/priority"]) > 0, job
    storage = instance.event_log_storage
    storage.set_concurrency_slots("cpu-pool", 1)
    storage.set_concurrency_slots("light-pool", 2)
    assert storage.claim_concurrency_slot("cpu-pool", "retrain", "model_sklearn").is_claimed
    assert not storage.claim_concurrency_slot("cpu-pool", "retrain-2", "model_sklearn").is_claimed
    pool = _pool(defs, "production_model")
    assert storage.claim_concurrency_slot(pool, "rollback", "production_model").is_claimed


def test_automation_runs_carry_a_trigger_tag(settings):
    defs = build_definitions(settings)
    sensor = defs.resolve_sensor_def("lifecycle_automation")
    assert sensor.run_tags["unified-ai/trigger"] == "automation"
    assert sensor.run_tags["unified-ai/reason"]
    # Every other way a run starts names its trigger too (jobs launched by sensors set it per
    # request; the schedule and the automation sensor set it here).
    for schedule in defs.schedules or []:
        assert schedule.tags["unified-ai/trigger"] == "schedule"


ROOT = Path(__file__).resolve().parents[2]


def _report_run_limits() -> dict[str, tuple[int, int]]:
    """Per instance config we ship: (report runs allowed at once, runs allowed at once)."""
    out = {}
    for name in ("deploy/local/dagster.yaml", "deploy/stack/dagster.yaml", "deploy/dagster.yaml"):
        runs = yaml.safe_load((ROOT / name).read_text())["concurrency"]["runs"]
        out[name] = (_tag_limit(runs.get("tag_concurrency_limits", [])),
                     runs["max_concurrent_runs"])
    coordinator = yaml.safe_load((ROOT / "deploy/helm/values.yaml").read_text())[
        "dagsterDaemon"]["runCoordinator"]["config"]["queuedRunCoordinator"]
    out["deploy/helm/values.yaml"] = (_tag_limit(coordinator.get("tagConcurrencyLimits", [])),
                                      coordinator["maxConcurrentRuns"])
    return out


def _tag_limit(limits: list[dict]) -> int | None:
    return next((limit["limit"] for limit in limits
                 if limit["key"] == RUN_QUEUE_TAG and limit.get("value") == REPORT_QUEUE), None)


def test_report_runs_never_hold_every_run_slot(settings):
    """A report run waiting for a report-pool slot still holds a run slot: without a cap, a
    landing of many batches fills the run queue's slots with reports and the next ingestion,
    retrain or rollback waits behind them."""
    defs = build_definitions(settings)
    assert defs.resolve_sensor_def("report_automation").run_tags[RUN_QUEUE_TAG] == REPORT_QUEUE
    assert RUN_QUEUE_TAG not in defs.resolve_sensor_def("lifecycle_automation").run_tags
    for name, (reports, runs) in _report_run_limits().items():
        assert reports is not None, f"{name}: no run limit for {RUN_QUEUE_TAG}={REPORT_QUEUE}"
        assert 1 <= reports < runs, name
