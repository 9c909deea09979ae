"""What a launch carries: the plan of a job's steps as run tags and, on Kubernetes, the
per-step pod overrides as run config. Used by the sensors that start runs."""

from __future__ import annotations

from typing import Any

from unified_assets.placement.planner import plan
from unified_assets.placement.policy import PlacementPolicy
from unified_assets.placement.probe import take_snapshot
from unified_assets.placement.serialize import plan_to_tags
from unified_assets.placement.steps import requirements_for_job


def launch_plan(job_def: Any, instance: Any, policy: PlacementPolicy,
                kubernetes: bool = False, ray_address: str | None = None
                ) -> tuple[dict[str, str], dict[str, Any]]:
    """(run tags, run config) for launching `job_def` now. Raises PlacementError when the
    policy forbids the launch, before anything runs. With `ray_address` the plan is made
    against the Ray cluster's capacity (the Ray executor re-checks each GPU step at launch)."""
    snapshot = take_snapshot(instance, kubernetes=kubernetes, ray_address=ray_address)
    the_plan = plan(requirements_for_job(job_def), snapshot, policy)
    run_config: dict[str, Any] = {}
    if kubernetes:
        from unified_assets.placement.manifests import plan_run_config

        run_config = plan_run_config(the_plan)
    return plan_to_tags(the_plan), run_config
