"""The local executor never runs two GPU-profile steps at once with one GPU slot, while
CPU steps still run beside them (a real multiprocess run on the executor `build_definitions`
builds). Judged by the order of step events the instance recorded, not by the clock: each
step waits (bounded) for a step that must run beside it, so overlap is forced where allowed."""

import os
import time
from pathlib import Path

import dagster as dg

from unified_assets.compute import CPU_LIGHT, GPU_TRAINING
from unified_assets.definitions import build_definitions
from unified_assets.settings import Settings

FOLDER_ENV = "UNIFIED_AI_TEST_SLOT_FOLDER"


def _await(flag: Path, what: str) -> None:
    """Wait for `flag` (a bound on waiting for a step that must run alongside, not a speed
    assertion): a step that never comes means the steps could not run together."""
    deadline = time.monotonic() + 120
    while not flag.exists():
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} never started alongside this step")
        time.sleep(0.05)


def _gpu_step(name: str):
    @dg.asset(name=name, **GPU_TRAINING.asset_kwargs())
    def _asset() -> None:
        folder = Path(os.environ[FOLDER_ENV])
        (folder / "gpu-started").touch()
        _await(folder / "cpu-started", "the CPU step")  # holds the GPU slot until it has

    return _asset


@dg.asset(name="cpu_a", **CPU_LIGHT.asset_kwargs())
def _cpu_step() -> None:
    folder = Path(os.environ[FOLDER_ENV])
    (folder / "cpu-started").touch()
    _await(folder / "gpu-started", "a GPU step")


def slot_job() -> dg.JobDefinition:
    # The executor of the code location's own definitions (local deployment).
    executor = build_definitions(Settings("local", Path(os.environ[FOLDER_ENV]), None)).executor
    job = dg.define_asset_job("slots", selection=dg.AssetSelection.all())
    defs = dg.Definitions(assets=[_gpu_step("gpu_a"), _gpu_step("gpu_b"), _cpu_step],
                          jobs=[job], executor=executor)
    return defs.resolve_job_def("slots")


def _step_events(instance: dg.DagsterInstance, run_id: str) -> list[tuple[str, str]]:
    """(step, start|end) in the order the instance recorded them."""
    kinds = {dg.DagsterEventType.STEP_START: "start", dg.DagsterEventType.STEP_SUCCESS: "end"}
    records = instance.get_records_for_run(run_id).records
    return [(r.event_log_entry.step_key, kinds[r.event_log_entry.dagster_event.event_type])
            for r in sorted(records, key=lambda r: r.storage_id)
            if r.event_log_entry.is_dagster_event
            and r.event_log_entry.dagster_event.event_type in kinds]


def test_two_gpu_steps_never_overlap_on_one_slot(tmp_path, monkeypatch):
    monkeypatch.setenv(FOLDER_ENV, str(tmp_path))
    with (
        dg.instance_for_test() as instance,
        dg.execute_job(dg.reconstructable(slot_job), instance=instance) as result,
    ):
        assert result.success, [e.message for e in result.all_events if e.is_failure]
        events = _step_events(instance, result.run_id)
    assert sorted(events) == sorted((s, k) for s in ("cpu_a", "gpu_a", "gpu_b")
                                    for k in ("start", "end")), events
    # One GPU slot: the GPU steps' start..end spans never interleave.
    gpu = [e for e in events if e[0].startswith("gpu_")]
    assert gpu[0][0] == gpu[1][0] and gpu[2][0] == gpu[3][0], f"GPU steps overlapped: {events}"
    first_gpu_end = events.index((gpu[0][0], "end"))
    # The CPU step ran beside the first GPU step (each waited for the other to start).
    assert events.index(("cpu_a", "start")) < first_gpu_end, f"no parallelism at all: {events}"
    assert events.index(("cpu_a", "end")) > events.index(gpu[0]), events
