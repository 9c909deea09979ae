"""The local executor never runs two GPU-profile steps at once with one GPU slot, while
CPU steps still run beside them (a real multiprocess run)."""

import json
import os
import time
from pathlib import Path

import dagster as dg

from unified_assets.compute import CPU_LIGHT, GPU_TRAINING
from unified_assets.definitions import LOCAL_EXECUTOR_CONFIG

LOG_ENV = "UNIFIED_AI_TEST_SLOT_LOG"


def _timed(name: str, profile):
    @dg.asset(name=name, **profile.asset_kwargs())
    def _asset() -> None:
        started = time.time()
        time.sleep(1.5)
        with open(os.environ[LOG_ENV], "a") as log:
            log.write(json.dumps({"step": name, "start": started, "end": time.time()}) + "\n")

    return _asset


def slot_job() -> dg.JobDefinition:
    assets = [_timed("gpu_a", GPU_TRAINING), _timed("gpu_b", GPU_TRAINING),
              _timed("cpu_a", CPU_LIGHT)]
    job = dg.define_asset_job("slots", selection=dg.AssetSelection.all())
    defs = dg.Definitions(assets=assets, jobs=[job], executor=dg.multiprocess_executor.configured(
        {**LOCAL_EXECUTOR_CONFIG, "max_concurrent": 3}))
    return defs.resolve_job_def("slots")


def test_two_gpu_steps_never_overlap_on_one_slot(tmp_path, monkeypatch):
    log = tmp_path / "slots.jsonl"
    monkeypatch.setenv(LOG_ENV, str(log))
    with (
        dg.instance_for_test() as instance,
        dg.execute_job(dg.reconstructable(slot_job), instance=instance) as result,
    ):
        assert result.success
    spans = {r["step"]: r for r in map(json.loads, Path(log).read_text().splitlines())}
    first, second = sorted((spans["gpu_a"], spans["gpu_b"]), key=lambda r: r["start"])
    assert second["start"] >= first["end"], "GPU steps overlapped"
    cpu = spans["cpu_a"]
    assert cpu["start"] < first["end"] and cpu["end"] > first["start"], "no parallelism at all"
