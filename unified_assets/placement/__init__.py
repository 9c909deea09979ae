"""Compute placement: decide before a run where each step goes (GPU or CPU, which pool), why,
and what happens when the GPU is not there; re-check when the step starts.

    snapshot = take_snapshot(instance)                      # probe: host, Dagster, k8s
    the_plan = plan(requirements, snapshot, DEFAULT_POLICY)  # pure
    tags = plan_to_tags(the_plan); print(render_table(the_plan))
    decision = decide_at_start(context.run.tags, requirement)  # in the step

Kubernetes manifests and the executor are in `unified_assets.placement.manifests`,
requirements read from a Dagster job in `unified_assets.placement.steps`; on Ray, capacity in
`ray_capacity`, the executor (each step a Ray job placed by the planner) in `ray_executor`,
and what a step reads back inside its Ray job in `ray_step`. Importing this
package (or those two) loads neither torch, kubernetes, dagster-k8s nor dagster: each is
imported inside the function that needs it."""

from unified_assets.placement.decision import (
    Alternative,
    Decision,
    PlacementError,
    Plan,
    StepRequirement,
)
from unified_assets.placement.planner import decide, plan, revalidate
from unified_assets.placement.policy import (
    DEFAULT_POLICY,
    PlacementPolicy,
    PolicyError,
    ProfileRule,
    ScalableNodePool,
)
from unified_assets.placement.probe import probe_cuda, probe_host, probe_instance, take_snapshot
from unified_assets.placement.runtime import decide_at_start
from unified_assets.placement.serialize import (
    PLACEMENT_TAG,
    decision_from_tags,
    decision_metadata,
    decisions_from_tags,
    plan_to_tags,
    render_table,
)
from unified_assets.placement.snapshot import (
    CapacitySnapshot,
    CudaDevice,
    HostCapacity,
    InstanceLoad,
    K8sCapacity,
    K8sNode,
    PoolOccupancy,
)

__all__ = [
    "DEFAULT_POLICY", "PLACEMENT_TAG", "Alternative", "CapacitySnapshot", "CudaDevice",
    "Decision", "HostCapacity", "InstanceLoad", "K8sCapacity", "K8sNode", "PlacementError",
    "PlacementPolicy", "Plan", "PolicyError", "PoolOccupancy", "ProfileRule",
    "ScalableNodePool", "StepRequirement", "decide", "decide_at_start", "decision_from_tags",
    "decision_metadata", "decisions_from_tags", "plan", "plan_to_tags",
    "probe_cuda", "probe_host", "probe_instance", "render_table", "revalidate", "take_snapshot",
]
