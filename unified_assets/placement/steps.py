"""Requirements from a Dagster job: one `StepRequirement` per step that declares a compute
profile, with the step's tags as Dagster computed them (for `job_manifests`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from unified_assets.placement.decision import StepRequirement


def job_steps(job_def: Any) -> list[Any]:
    """The job's execution steps in topological order (a plan is built, nothing runs)."""
    from dagster._core.execution.api import create_execution_plan

    return list(create_execution_plan(job_def).get_all_steps_in_topo_order())


def requirements_for_job(job_def: Any,
                         input_rows: Mapping[str, int] | None = None) -> list[StepRequirement]:
    """Steps with a `unified-ai/profile` tag as requirements; `input_rows` by step key."""
    rows = input_rows or {}
    out = []
    for step in job_steps(job_def):
        asset_key = job_def.asset_layer.get_asset_key_for_node(step.node_handle)
        requirement = StepRequirement.from_tags(
            step.key, dict(step.tags), op_name=step.op_name, input_rows=rows.get(step.key),
            asset_key=asset_key.to_user_string() if asset_key else None)
        if requirement is not None:
            out.append(requirement)
    return out


def step_tags_for_job(job_def: Any) -> dict[str, dict[str, str]]:
    """Each step's tags as the executor sees them, by step key."""
    return {step.key: dict(step.tags) for step in job_steps(job_def)}
