"""Placement end to end on this CUDA-less machine: the GPU-profile model runs under the
policy's fallback and says so; with fail_and_escalate the run fails clearly and nothing
downstream of the GPU step runs."""

import dagster as dg
import pytest

from tests.policies import shipped_policy, with_policy
from unified_assets.definitions import build_definitions
from unified_assets.lifecycle import ingest_landed, train_evaluate_promote
from unified_assets.ml.generator import write_batches
from unified_assets.placement import decisions_from_tags, plan, plan_to_tags, take_snapshot
from unified_assets.placement.steps import requirements_for_job

pytestmark = pytest.mark.slow  # full lifecycles


def _policy(settings, tmp_path, gpu_rule):
    """The shipped policy with these placement rules (a partial policy is refused)."""
    policy = shipped_policy()
    policy["placement"] = {"profiles": {
        "cpu-light": {"targets": ["cpu"]}, "cpu-training": {"targets": ["cpu"]},
        "gpu-training": gpu_rule}}
    return with_policy(settings, tmp_path, base=policy)


def test_gpu_model_degrades_to_cpu_and_the_run_carries_the_plan(settings, instance, tmp_path):
    write_batches(settings.landing_dir, batches=3, rows=1500)
    settings = _policy(settings, tmp_path, {"targets": ["gpu", "cpu"],
                                             "on_unavailable": "degrade_to_cpu",
                                             "degraded_settings": {"device": "cpu"}})
    defs = build_definitions(settings)
    ingest_landed(defs, instance)
    job = defs.resolve_job_def("train_evaluate_promote")
    planned = plan(requirements_for_job(job), take_snapshot(instance),
                   defs.resources["policy"].policy.placement)
    tags = plan_to_tags(planned)
    assert decisions_from_tags(tags)["model_torch"].fallback == "degrade_to_cpu"
    result = job.execute_in_process(instance=instance, tags=tags, raise_on_error=False)
    assert result.output_for_node("model_torch").version
    metadata = instance.fetch_materializations(dg.AssetKey("model_torch"), limit=1).records[0]
    metadata = metadata.asset_materialization.metadata
    assert metadata["device"].value == "cpu"
    assert metadata["placement_fallback"].value == "degraded to CPU"
    assert metadata["placement_stage"].value == "start"
    assert "no CUDA device" in metadata["placement_reason"].value
    assert instance.get_run_by_id(result.run_id).tags["unified-ai/placement"]


def test_fail_and_escalate_fails_the_gpu_step_and_holds_everything_downstream(
    settings, instance, tmp_path
):
    write_batches(settings.landing_dir, batches=3, rows=1500)
    settings = _policy(settings, tmp_path, {"targets": ["gpu"],
                                             "on_unavailable": "fail_and_escalate"})
    defs = build_definitions(settings)
    ingest_landed(defs, instance)
    result = train_evaluate_promote(defs, instance)
    assert not result.success
    failure = next(e for e in result.all_events
                   if e.is_step_failure and e.step_key == "model_torch")
    message = failure.event_specific_data.error.message
    assert "placement refused by policy" in message and "fail_and_escalate" in message
    for asset in ("evaluation_torch", "challenger", "approval", "production_model"):
        assert instance.fetch_materializations(dg.AssetKey(asset), limit=1).records == [], asset
