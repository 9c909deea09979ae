"""What a step calls when it starts: find its planned decision in the run tags (or plan it
now if the run was launched without a plan) and re-validate it on this host."""

from __future__ import annotations

from collections.abc import Mapping

from unified_assets.placement.decision import Decision, StepRequirement
from unified_assets.placement.planner import decide, revalidate
from unified_assets.placement.policy import DEFAULT_POLICY, PlacementPolicy
from unified_assets.placement.serialize import decision_from_tags
from unified_assets.placement.snapshot import CapacitySnapshot


def decide_at_start(run_tags: Mapping[str, str], step: StepRequirement, *,
                    snapshot: CapacitySnapshot | None = None,
                    policy: PlacementPolicy = DEFAULT_POLICY) -> Decision:
    """The final decision for `step`: planned (from `run_tags`) or planned now, then
    re-validated against `snapshot` (default: a fresh probe of this host). Raises
    `PlacementError` (check `.retryable`) when the policy forbids running.

    A step launched as a Ray job takes the decision it was launched with (Ray enforces its
    request; this host's CUDA probe says nothing about a logical GPU), checked against the
    GPU ids Ray gave it."""
    from unified_assets.placement.ray_step import launch_decision

    on_ray = launch_decision(step)
    if on_ray is not None:
        return on_ray
    if snapshot is None:
        from unified_assets.placement.probe import probe_host

        snapshot = CapacitySnapshot(host=probe_host(cuda=step.profile.device == "gpu"))
    planned = decision_from_tags(run_tags, step.step_key)
    if planned is None or planned.requirement.profile != step.profile:
        planned = decide(step, snapshot, policy)
    return revalidate(planned, snapshot, policy)
