"""Placement executed on a real Ray cluster (tests/ray/conftest.py: a CPU head and a worker
declaring one logical GPU in the `gpu` pool). No mock of Ray: the evidence is Ray's own job
and node records, and what each step recorded from inside its Ray job. No wall-clock bounds."""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import dagster as dg
import pytest
from dagster._core.execution.job_execution_result import JobExecutionResult
from dagster._core.execution.plan.objects import ErrorSource

from tests.ray import ray_defs
from tests.ray.conftest import RayTestCluster
from unified_assets.placement import ray_warm
from unified_assets.placement.ray_capacity import REQUEST_METADATA, fetch_ray_capacity
from unified_assets.placement.ray_step import OOM_EXIT_CODE

POLL_S = 0.5
PATIENCE_S = 240  # how long a test waits for a Ray job to reach a state before failing


def run_job(job_fn: Callable[[], dg.JobDefinition], cluster: RayTestCluster,
            instance: dg.DagsterInstance, monkeypatch: pytest.MonkeyPatch, policy: str,
            hold_s: float = 0) -> JobExecutionResult:
    monkeypatch.setenv(ray_defs.POLICY_ENV, policy)  # passed by name (run_config env_vars)
    monkeypatch.setenv(ray_defs.HOLD_ENV, str(hold_s))
    return dg.execute_job(dg.reconstructable(job_fn), instance=instance,
                          run_config=cluster.run_config(), raise_on_error=False)


class Background:
    """A run in a thread, so the test can change the cluster while it runs."""

    def __init__(self, start: Callable[[], JobExecutionResult]) -> None:
        self.result: JobExecutionResult | None = None
        self.thread = threading.Thread(target=self._run, args=(start,), daemon=True)
        self.thread.start()

    def _run(self, start: Callable[[], JobExecutionResult]) -> None:
        self.result = start()

    def join(self) -> JobExecutionResult:
        # A whole run (a held step, a relaunch, the steps after it), not one job's state change:
        # twice the patience, since on two saturated cores each Ray job start takes seconds.
        self.thread.join(2 * PATIENCE_S)
        assert self.result is not None, "the run did not finish"
        return self.result


def ray_jobs(cluster: RayTestCluster, run_id: str | None = None) -> dict[str, list[Any]]:
    """Ray's job records of a run (or of every run), by op, in submission order."""
    from ray.job_submission import JobSubmissionClient

    out: dict[str, list[Any]] = {}
    for job in sorted(JobSubmissionClient(cluster.address).list_jobs(),
                      key=lambda j: j.start_time or 0):
        meta = job.metadata or {}
        if run_id is None or meta.get("dagster/run-id") == run_id:
            out.setdefault(meta.get("dagster/op", "?"), []).append(job)
    return out


def wait_for_job(cluster: RayTestCluster, op: str, status: str | None,
                 besides: Any = None) -> Any:
    """The newest Ray job of `op` in `status` (None: any); with `besides` (a job), another
    job of the same run than that one."""
    deadline = time.monotonic() + PATIENCE_S
    run_id = (besides.metadata or {}).get("dagster/run-id") if besides is not None else None
    other = besides.submission_id if besides is not None else None
    while time.monotonic() < deadline:
        jobs = [j for j in ray_jobs(cluster, run_id).get(op, []) if j.submission_id != other
                and (status is None or str(j.status.value) == status)]
        if jobs:
            return jobs[-1]
        time.sleep(POLL_S)
    raise AssertionError(f"no Ray job for {op} reached {status or 'any status'}")


def materializations(instance: dg.DagsterInstance, run_id: str) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for record in instance.all_logs(run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION):
        materialization = record.dagster_event.step_materialization_data.materialization
        out.setdefault(record.step_key, []).append(
            {k: v.value for k, v in materialization.metadata.items()})
    return out


def only(metas: dict[str, list[dict[str, Any]]], step: str) -> dict[str, Any]:
    assert len(metas.get(step, [])) == 1, f"{step}: {len(metas.get(step, []))} materializations"
    return metas[step][0]


def step_events(instance: dg.DagsterInstance, run_id: str, kind: dg.DagsterEventType,
                step: str) -> list[Any]:
    return [r.dagster_event for r in instance.all_logs(run_id, of_type=kind) if r.step_key == step]


def held_interval(cluster: RayTestCluster, job: Any) -> tuple[float, float]:
    """When a job held its resources, from Ray's GCS actor table: the lifetime of the job's
    supervisor actor, which Ray creates with the entrypoint's request once it can grant it."""
    name = f"_ray_internal_job_actor_{job.submission_id}"
    deadline = time.monotonic() + PATIENCE_S  # the step is done before its supervisor exits
    while True:
        actors = [a for a in cluster.cluster.global_state.actor_table(None).values()
                  if a.get("Name") == name]
        if actors and actors[0].get("EndTime"):
            return actors[0]["StartTime"] / 1000, actors[0]["EndTime"] / 1000
        assert time.monotonic() < deadline, f"Ray job {job.submission_id}'s supervisor never ended"
        time.sleep(POLL_S)


@pytest.fixture
def gpu_node_down(ray_cluster: RayTestCluster) -> Iterator[str]:
    """The GPU node removed for the test, a new one added back after it."""
    node_id = ray_cluster.remove_gpu_node()
    yield node_id
    if ray_cluster.gpu_node is None:
        ray_cluster.add_gpu_node()


def test_a_planned_gpu_step_runs_on_the_gpu_node_and_cpu_steps_never_hold_one(
        ray_cluster: RayTestCluster, ray_instance: dg.DagsterInstance,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A run planned against Ray's capacity (as a sensor or the CLI launches it) carries its
    plan to the launch: the GPU step asks Ray for the GPU and gets it on the GPU node; the
    CPU steps around it never hold one."""
    from unified_assets.placement.launch import launch_plan

    monkeypatch.setenv(ray_defs.POLICY_ENV, "wait")
    monkeypatch.setenv(ray_defs.HOLD_ENV, "0")
    tags, _ = launch_plan(ray_defs.GPU_CHAIN["wait"](), ray_instance, ray_defs.policy_for("wait"),
                          ray_address=ray_cluster.address)
    assert "gpu: gpu_a" in tags["unified-ai/placement"]
    result = dg.execute_job(dg.reconstructable(ray_defs.GPU_CHAIN["wait"]), instance=ray_instance,
                            run_config=ray_cluster.run_config(), tags=tags, raise_on_error=False)
    assert result.success
    jobs, metas = ray_jobs(ray_cluster, result.run_id), materializations(ray_instance, result.run_id)

    gpu_job = jobs["gpu_a"][-1]
    gpu = only(metas, "gpu_a")
    assert gpu_job.driver_node_id == ray_cluster.gpu_node_id == gpu["ray_node_id"]
    assert json.loads(gpu_job.metadata[REQUEST_METADATA])["num_gpus"] == 1
    assert gpu["ray_node_pool"] == "gpu" and gpu["ray_gpu_ids"] == "0"
    assert gpu["ray_cuda_visible_devices"] == "0"
    assert gpu["placement_target"] == "gpu"
    assert gpu["placement_reason"].startswith("GPU free: ray pool gpu")  # the plan's reason
    assert "at launch: GPU free" in gpu["placement_reason"]  # re-checked when launched
    assert gpu["ray_submission_id"] == gpu_job.submission_id

    for step in ("source", "after_gpu"):
        job, meta = jobs[step][-1], only(metas, step)
        assert job.driver_node_id != ray_cluster.gpu_node_id, step
        assert json.loads(job.metadata[REQUEST_METADATA])["num_gpus"] == 0, step
        assert meta["ray_gpu_ids"] == "none", step
        assert meta["ray_cuda_visible_devices"] in ("(unset)", ""), step
        assert meta["ray_node_pool"] != "gpu" and meta["placement_target"] == "cpu", step


def test_one_gpu_two_gpu_steps_never_run_at_once(
        ray_cluster: RayTestCluster, ray_instance: dg.DagsterInstance,
        monkeypatch: pytest.MonkeyPatch) -> None:
    result = run_job(ray_defs.two_gpu_job, ray_cluster, ray_instance, monkeypatch, "wait")
    assert result.success
    jobs, metas = ray_jobs(ray_cluster, result.run_id), materializations(ray_instance, result.run_id)
    a, b = jobs["gpu_a"][-1], jobs["gpu_b"][-1]
    assert a.driver_node_id == b.driver_node_id == ray_cluster.gpu_node_id
    assert only(metas, "gpu_a")["ray_gpu_ids"] == only(metas, "gpu_b")["ray_gpu_ids"] == "0"
    (a0, a1), (b0, b1) = held_interval(ray_cluster, a), held_interval(ray_cluster, b)
    assert a1 <= b0 or b1 <= a0, f"GPU jobs overlapped: a {a0}-{a1}, b {b0}-{b1}"


def test_gpu_node_gone_before_launch_degrade_to_cpu(
        ray_cluster: RayTestCluster, ray_instance: dg.DagsterInstance, gpu_node_down: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    result = run_job(ray_defs.GPU_CHAIN["degrade_to_cpu"], ray_cluster, ray_instance,
                     monkeypatch, "degrade_to_cpu")
    assert result.success
    jobs, metas = ray_jobs(ray_cluster, result.run_id), materializations(ray_instance, result.run_id)
    gpu = only(metas, "gpu_a")
    assert gpu["placement_target"] == "cpu" and gpu["placement_fallback"] == "degraded to CPU"
    assert json.loads(gpu["placement_settings"]) == {"device": "cpu"}
    assert "ray pool gpu has no live node" in gpu["placement_reason"]
    assert "on_unavailable=degrade_to_cpu" in gpu["placement_reason"]
    assert gpu["ray_gpu_ids"] == "none" and gpu["ray_node_pool"] != "gpu"
    assert json.loads(jobs["gpu_a"][-1].metadata[REQUEST_METADATA])["num_gpus"] == 0
    assert len(metas.get("after_gpu", [])) == 1


def test_gpu_node_gone_before_launch_fail_and_escalate(
        ray_cluster: RayTestCluster, ray_instance: dg.DagsterInstance, gpu_node_down: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    result = run_job(ray_defs.GPU_CHAIN["fail_and_escalate"], ray_cluster, ray_instance,
                     monkeypatch, "fail_and_escalate")
    assert not result.success
    failures = step_events(ray_instance, result.run_id, dg.DagsterEventType.STEP_FAILURE, "gpu_a")
    assert len(failures) == 1
    message = failures[0].step_failure_data.error.message
    assert "refused by policy before launch" in message
    assert "on_unavailable=fail_and_escalate" in message and "no live node" in message
    jobs = ray_jobs(ray_cluster, result.run_id)
    assert "gpu_a" not in jobs and "after_gpu" not in jobs  # nothing submitted to Ray
    assert set(materializations(ray_instance, result.run_id)) == {"source"}


def test_gpu_node_gone_before_launch_wait_queues_until_a_gpu_node_joins(
        ray_cluster: RayTestCluster, ray_instance: dg.DagsterInstance, gpu_node_down: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    run = Background(lambda: run_job(ray_defs.GPU_CHAIN["wait"], ray_cluster, ray_instance,
                                     monkeypatch, "wait"))
    pending = wait_for_job(ray_cluster, "gpu_a", "PENDING")
    assert fetch_ray_capacity(ray_cluster.address).pending_gpus >= 1
    new_node = ray_cluster.add_gpu_node()
    result = run.join()
    assert result.success
    gpu = only(materializations(ray_instance, result.run_id), "gpu_a")
    assert gpu["ray_submission_id"] == pending.submission_id
    assert gpu["ray_node_id"] == new_node.node_id != gpu_node_down
    assert gpu["placement_target"] == "gpu" and gpu["ray_gpu_ids"] == "0"
    assert gpu["placement_fallback"] == "waited for capacity, then ran"
    assert "no live node" in gpu["placement_reason"] and "queued" in gpu["placement_reason"]


@pytest.mark.parametrize("policy", ["degrade_to_cpu", "fail_and_escalate", "wait"])
def test_gpu_node_lost_while_its_step_runs(
        ray_cluster: RayTestCluster, ray_instance: dg.DagsterInstance,
        monkeypatch: pytest.MonkeyPatch, policy: str) -> None:
    run = Background(lambda: run_job(ray_defs.GPU_CHAIN[policy], ray_cluster, ray_instance,
                                     monkeypatch, policy, hold_s=60))
    first = wait_for_job(ray_cluster, "gpu_a", "RUNNING")
    lost = ray_cluster.remove_gpu_node()
    try:
        if policy == "wait":
            # The relaunch is queued on the GPU pool, not run on CPU, until a GPU node is back.
            relaunch = wait_for_job(ray_cluster, "gpu_a", "PENDING", besides=first)
            assert relaunch.submission_id != first.submission_id
            assert fetch_ray_capacity(ray_cluster.address).pending_gpus >= 1
        elif policy == "degrade_to_cpu":
            # The GPU node comes back only after the relaunch was placed: placed while a GPU
            # node is live, it would rightly go to the GPU again.
            wait_for_job(ray_cluster, "gpu_a", None, besides=first)
    finally:
        back = ray_cluster.add_gpu_node()
    result = run.join()
    metas = materializations(ray_instance, result.run_id)
    assert "after_gpu" not in metas or len(metas["after_gpu"]) == 1
    if policy == "fail_and_escalate":
        assert not result.success
        failures = step_events(ray_instance, result.run_id, dg.DagsterEventType.STEP_FAILURE,
                               "gpu_a")
        message = failures[-1].step_failure_data.error.message
        assert f"Ray node {lost[:8]} (pool gpu) was lost while the step ran" in message
        assert "on_unavailable=fail_and_escalate" in message
        assert "gpu_a" not in metas and "after_gpu" not in metas  # nothing downstream ran
        return
    assert result.success
    retries = step_events(ray_instance, result.run_id, dg.DagsterEventType.STEP_UP_FOR_RETRY,
                          "gpu_a")
    assert len(retries) == 1 and f"Ray node {lost[:8]}" in retries[0].step_retry_data.error.message
    assert f"on_unavailable={policy}: relaunched" in retries[0].step_retry_data.error.message
    gpu = only(metas, "gpu_a")  # the lost attempt produced nothing
    assert len(metas["after_gpu"]) == 1
    if policy == "wait":
        assert gpu["ray_submission_id"] == relaunch.submission_id
        assert gpu["ray_node_id"] == back.node_id != lost
        assert gpu["placement_target"] == "gpu" and gpu["ray_gpu_ids"] == "0"
        assert gpu["placement_fallback"] == "waited for capacity, then ran"
        assert "was lost while the step ran" in gpu["placement_reason"]
        return
    assert gpu["placement_target"] == "cpu" and gpu["placement_fallback"] == "degraded to CPU"
    assert "was lost while the step ran" in gpu["placement_reason"]
    assert gpu["ray_gpu_ids"] == "none"
    assert len(metas["after_gpu"]) == 1


def test_out_of_memory_step_is_retried_on_the_larger_profile(
        ray_cluster: RayTestCluster, ray_instance: dg.DagsterInstance,
        monkeypatch: pytest.MonkeyPatch) -> None:
    result = run_job(ray_defs.oom_job, ray_cluster, ray_instance, monkeypatch, "wait")
    assert result.success
    first, second = ray_jobs(ray_cluster, result.run_id)["hungry"]
    assert first.driver_exit_code == OOM_EXIT_CODE  # a real MemoryError under the 1Gi limit
    assert json.loads(first.metadata[REQUEST_METADATA])["memory"] == 2**30
    assert json.loads(second.metadata[REQUEST_METADATA])["memory"] == 4 * 2**30
    retries = step_events(ray_instance, result.run_id, dg.DagsterEventType.STEP_UP_FOR_RETRY,
                          "hungry")
    assert len(retries) == 1
    assert "out of memory on profile cpu-light" in retries[0].step_retry_data.error.message
    meta = only(materializations(ray_instance, result.run_id), "hungry")
    assert meta["ray_profile"] == "cpu-training" and meta["ray_submission_id"] == second.submission_id
    assert "retried on the larger profile cpu-training" in meta["placement_reason"]
    assert int(meta["allocated_bytes"]) == ray_defs.HUNGRY_BYTES


def test_the_code_locations_torch_model_trains_on_the_gpu_node(
        ray_cluster: RayTestCluster, ray_instance: dg.DagsterInstance,
        monkeypatch: pytest.MonkeyPatch, tmp_path, mlflow_db_template) -> None:
    """Not a stand-in: the shipped torch candidate's model step (GPU profile) is placed on the
    GPU pool, trains there (on CPU, as this machine has no CUDA, and says so), registers a
    model version; the training set before it never holds a GPU."""
    import shutil

    from tests.policies import write_policy
    from unified_assets.definitions import build_definitions
    from unified_assets.lifecycle import ingest_landed
    from unified_assets.ml.generator import write_batches
    from unified_assets.settings import load_settings

    home = tmp_path / "home"
    home.mkdir()
    shutil.copy(mlflow_db_template, home / "mlflow.db")
    # Small data would send the GPU profile to CPU (small_input_rows): not what is tested here.
    policy = write_policy(tmp_path, {"placement": {"profiles": {
        "gpu-training": {"small_input_rows": None}}}})
    monkeypatch.setenv("UNIFIED_AI_HOME", str(home))
    monkeypatch.setenv("UNIFIED_AI_POLICY", str(policy))
    write_batches(home / "landing", batches=2, rows=1500)
    ingest_landed(build_definitions(load_settings()), ray_instance)

    result = dg.execute_job(dg.reconstructable(ray_defs.code_location_torch_model),
                            instance=ray_instance, run_config=ray_cluster.run_config(),
                            raise_on_error=False)
    assert result.success, [e.message for e in result.all_events if e.is_failure]
    jobs, metas = ray_jobs(ray_cluster, result.run_id), materializations(ray_instance, result.run_id)
    model = only(metas, "model_torch")
    assert jobs["model_torch"][-1].driver_node_id == ray_cluster.gpu_node_id == model["ray_node_id"]
    assert model["ray_node_pool"] == "gpu" and model["ray_gpu_ids"] == "0"
    assert model["placement_target"] == "gpu" and model["model_version"]
    training = only(metas, "training_set")
    assert jobs["training_set"][-1].driver_node_id != ray_cluster.gpu_node_id
    assert training["ray_gpu_ids"] == "none"


def test_pool_limits_come_from_the_ray_cluster_not_this_host(
        ray_cluster: RayTestCluster, tmp_path) -> None:
    """On Ray the pools are sized from the cluster: CPU steps by the CPUs of the nodes outside
    the GPU pool (the head's 4 logical CPUs; this host has 2), GPU steps by the GPU pool's
    logical GPUs (1; this host has none). A cluster that does not answer changes nothing."""
    from resources.policy import PolicyResource
    from tests.ray.conftest import free_port
    from unified_assets.definitions import build_pool_limits_sensor

    policy = PolicyResource()
    with dg.instance_for_test(temp_dir=str(tmp_path)) as instance:
        def tick(address: str) -> Any:
            sensor = build_pool_limits_sensor(False, address)
            return sensor(dg.build_sensor_context(instance=instance, resources={"policy": policy}))

        first = tick(ray_cluster.address)
        assert f"(from the Ray cluster at {ray_cluster.address})" in first.skip_reason.skip_message
        limits = {p.name: p.limit for p in instance.event_log_storage.get_pool_limits()
                  if not p.from_default}
        assert limits == {"light-pool": 8, "cpu-pool": 2, "gpu-pool": 1, "report-pool": 3}
        skipped = tick(f"http://127.0.0.1:{free_port()}")
        assert "did not answer" in skipped.skip_message
        assert {p.name: p.limit for p in instance.event_log_storage.get_pool_limits()
                if not p.from_default} == limits


def test_plan_on_the_ray_deployment_plans_against_the_ray_cluster(
        ray_cluster: RayTestCluster, tmp_path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    """`unified-ai plan` with UNIFIED_AI_DEPLOYMENT=ray reads the Ray cluster's capacity, as
    the run will meet it: the GPU step goes to the GPU pool though this host has no GPU."""
    from unified_assets.cli import main

    monkeypatch.setenv("UNIFIED_AI_DEPLOYMENT", "ray")
    monkeypatch.setenv("RAY_ADDRESS", ray_cluster.address)
    monkeypatch.setenv("UNIFIED_AI_HOME", str(tmp_path))
    # The precondition: the GPU is free (an earlier test's job may still be ending).
    deadline = time.monotonic() + PATIENCE_S
    while fetch_ray_capacity(ray_cluster.address).pools().get("gpu", {}).get("gpus_free", 0) < 1:
        assert time.monotonic() < deadline, "the GPU pool never had a free GPU"
        time.sleep(POLL_S)
    assert main(["plan", "--rows", "50000"]) == 0
    rows = {line.split()[0]: line for line in capsys.readouterr().out.splitlines() if line.strip()}
    assert " gpu " in rows["model_torch"] and "ray pool gpu" in rows["model_torch"]
    assert " cpu " in rows["model_sklearn"]


def _warm_pid(cluster: RayTestCluster, job: Any) -> int | None:
    """The pid of the warm process a step's Ray job runs in, from the job's own log."""
    from ray.job_submission import JobSubmissionClient

    log = JobSubmissionClient(cluster.address).get_job_logs(job.submission_id)
    match = re.search(r"step runs in process (\d+), forked from warm server", log)
    return int(match.group(1)) if match else None


def _warm_up(cluster: RayTestCluster, instance: dg.DagsterInstance,
             monkeypatch: pytest.MonkeyPatch) -> None:
    """Run the chain once, so its steps' warm servers start, and wait until every server
    started since then listens (its start marker is removed once it does)."""
    started = time.time()
    run_job(ray_defs.GPU_CHAIN["wait"], cluster, instance, monkeypatch, "wait")
    folder = ray_warm.socket_dir()
    deadline = time.monotonic() + PATIENCE_S
    while starting := [m.name for m in folder.glob("*.spawned")
                       if m.stat().st_mtime >= started - 1]:
        assert time.monotonic() < deadline, f"warm servers never listened: {starting}"
        time.sleep(POLL_S)


def test_steps_run_warm_with_their_own_gpu_ids_and_each_in_its_own_process(
        ray_cluster: RayTestCluster, ray_instance: dg.DagsterInstance,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """After a machine's first step started its warm server, each step's Ray job forks its
    step from it: still one Ray job per step holding the step's request, the GPU ids Ray gave
    that job (and only that job) reach the step, and every step is its own process."""
    _warm_up(ray_cluster, ray_instance, monkeypatch)
    result = run_job(ray_defs.GPU_CHAIN["wait"], ray_cluster, ray_instance, monkeypatch, "wait")
    assert result.success
    jobs, metas = ray_jobs(ray_cluster, result.run_id), materializations(ray_instance, result.run_id)
    pids = set()
    for step in ("source", "gpu_a", "after_gpu"):
        meta = only(metas, step)
        assert meta["ray_step_process"].startswith("forked from warm server"), (step, meta)
        assert meta["step_pid"] == str(_warm_pid(ray_cluster, jobs[step][-1])), step
        pids.add(meta["step_pid"])
    assert len(pids) == 3
    gpu = only(metas, "gpu_a")
    assert gpu["ray_gpu_ids"] == gpu["ray_cuda_visible_devices"] == "0"
    assert jobs["gpu_a"][-1].driver_node_id == ray_cluster.gpu_node_id == gpu["ray_node_id"]
    for step in ("source", "after_gpu"):  # the GPU id did not leak into a CPU step's process
        assert only(metas, step)["ray_gpu_ids"] == "none", step

    # The switch, set where Dagster runs, reaches the jobs: every step in a fresh interpreter.
    monkeypatch.setenv(ray_warm.SWITCH_ENV, "off")
    cold = run_job(ray_defs.GPU_CHAIN["wait"], ray_cluster, ray_instance, monkeypatch, "wait")
    assert cold.success
    cold_metas = materializations(ray_instance, cold.run_id)
    assert set(cold_metas) == {"source", "gpu_a", "after_gpu"}
    for step in cold_metas:
        assert only(cold_metas, step)["ray_step_process"] == "fresh interpreter", step


def test_stopping_a_warm_steps_ray_job_ends_the_step(
        ray_cluster: RayTestCluster, ray_instance: dg.DagsterInstance,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The step runs in a process outside the Ray job's process tree; stopping the job (as
    Ray does when a run is terminated) still ends it, and the run says so."""
    import os

    from ray.job_submission import JobSubmissionClient

    _warm_up(ray_cluster, ray_instance, monkeypatch)
    run = Background(lambda: run_job(ray_defs.GPU_CHAIN["wait"], ray_cluster, ray_instance,
                                     monkeypatch, "wait", hold_s=120))
    held = wait_for_job(ray_cluster, "gpu_a", "RUNNING")
    deadline = time.monotonic() + PATIENCE_S
    while (pid := _warm_pid(ray_cluster, held)) is None:
        assert time.monotonic() < deadline, "the GPU step never started warm"
        time.sleep(POLL_S)
    JobSubmissionClient(ray_cluster.address).stop_job(held.submission_id)
    result = run.join()
    assert not result.success
    failures = step_events(ray_instance, result.run_id, dg.DagsterEventType.STEP_FAILURE, "gpu_a")
    # Ray marks the job STOPPED only once its entrypoint exited, so which says it first is a
    # race: the step, interrupted by the stop signal Ray sent, or the handler seeing STOPPED.
    said = failures[-1].step_failure_data
    assert said.error_source == ErrorSource.INTERRUPT or \
        f"Ray job {held.submission_id} for step gpu_a was stopped" in said.error.message, said
    deadline = time.monotonic() + PATIENCE_S
    while True:  # ended by the server once its client went away (SIGTERM, then SIGKILL)
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        assert time.monotonic() < deadline, f"warm step process {pid} outlived its stopped job"
        time.sleep(POLL_S)
    assert "gpu_a" not in materializations(ray_instance, result.run_id)
