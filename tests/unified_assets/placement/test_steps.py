"""Requirements and step tags read from a Dagster job built from profiled assets."""

from __future__ import annotations

import dagster as dg
import pytest

from tests.unified_assets.placement.helpers import local
from unified_assets.compute import CPU_LIGHT, GPU_TRAINING
from unified_assets.placement import DEFAULT_POLICY, PlacementError, StepRequirement, plan
from unified_assets.placement.manifests import step_tags_for
from unified_assets.placement.steps import requirements_for_job, step_tags_for_job


@dg.asset(key_prefix="models", **GPU_TRAINING.asset_kwargs())
def torch_model() -> int:
    return 1


@dg.asset(**CPU_LIGHT.asset_kwargs())
def report(torch_model: int) -> int:
    return torch_model


@dg.asset
def unprofiled() -> int:
    return 0


JOB = dg.Definitions(assets=[torch_model, report, unprofiled],
                     jobs=[dg.define_asset_job("all_assets")]).resolve_job_def("all_assets")


def test_requirements_from_the_execution_plan():
    found = requirements_for_job(JOB, {"models__torch_model": 120_000})
    assert [(r.step_key, r.op, r.asset_key, r.profile.name, r.input_rows) for r in found] == [
        ("models__torch_model", "models__torch_model", "models/torch_model", "gpu-training", 120_000),
        ("report", "report", "report", "cpu-light", None),
    ]


def test_step_tags_are_strings_as_dagster_stores_them():
    tags = step_tags_for_job(JOB)
    assert set(tags) == {"models__torch_model", "report", "unprofiled"}
    assert tags["models__torch_model"]["unified-ai/profile"] == "gpu-training"
    assert all(isinstance(v, str) for v in tags["models__torch_model"].values())


def test_unknown_profile_tag_is_an_error():
    with pytest.raises(PlacementError, match="step 'x': unknown compute profile 'tpu-pod'"):
        StepRequirement.from_tags("x", {"unified-ai/profile": "tpu-pod"})
    assert StepRequirement.from_tags("x", {}) is None


def test_profile_tags_equal_the_step_tags_dagster_computes():
    the_plan = plan(requirements_for_job(JOB), local(), DEFAULT_POLICY)
    tags = step_tags_for_job(JOB)
    for decision in the_plan:
        assert step_tags_for(decision) == tags[decision.step_key], decision.step_key
