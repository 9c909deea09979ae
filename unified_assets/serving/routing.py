"""Where each part of one request runs, decided before the parts run, by the same planner
and policy that place Dagster steps, with the live state of the replicas.

The deployment placed each part's replicas (`deploy.place_parts`: the explainer on the GPU
pool, or degraded to CPU when the cluster has none). Per request, a part with running
replicas is called where they run; a part without any (or the explainer saturated: as many
explanations in flight as its replicas take at once) is judged by its profile's rule:
the GPU explainer degrades to its CPU twin (the fraud service's replica, which holds the
same model), waits within the latency budget, or escalates; a CPU part waits or escalates.
The live state is a snapshot the ingress refreshes in the background, so planning costs
microseconds, not a call to the Serve controller."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace

from unified_assets.compute import GPU_NODE_POOL, POOL_LABEL
from unified_assets.placement.decision import PlacementError, StepRequirement
from unified_assets.placement.planner import decide_on_ray
from unified_assets.placement.policy import PlacementPolicy
from unified_assets.placement.snapshot import RayCapacity, RayNode
from unified_assets.serving.profiles import MAX_ONGOING_REQUESTS, PARTS, SERVE_GPU

CALL, TWIN, WAIT, ESCALATE, SKIP = "call", "twin", "wait", "escalate", "skip"


@dataclass(frozen=True)
class PartPlacement:
    """One part of one request: `action` call (its replicas), twin (the CPU twin), wait (for
    a replica, within the latency budget), escalate (the policy refuses) or skip."""

    part: str
    target: str
    where: str
    reason: str
    action: str = CALL
    fallback: str = "none"

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class LiveView:
    """What the ingress last saw: running and target replicas per deployment, the Ray nodes."""

    running: dict[str, int] = field(default_factory=dict)
    target: dict[str, int] = field(default_factory=dict)
    nodes: tuple[RayNode, ...] = ()
    taken_at: float = 0.0

    def gpu_nodes(self) -> tuple[RayNode, ...]:
        return tuple(n for n in self.nodes if n.pool == GPU_NODE_POOL)


def nodes_from_ray(rows: list[dict]) -> tuple[RayNode, ...]:
    """`RayNode`s from `ray.nodes()` (inside a replica; the dashboard is not needed)."""
    out = []
    for row in rows:
        labels, total = row.get("Labels") or {}, row.get("Resources") or {}
        out.append(RayNode(node_id=row.get("NodeID", "?"), pool=labels.get(POOL_LABEL, ""),
                           alive=bool(row.get("Alive")), gpus_total=float(total.get("GPU", 0)),
                           cpus_total=float(total.get("CPU", 0))))
    return tuple(out)


def _replicas(live: LiveView, part: str) -> tuple[int, int]:
    deployment = PARTS[part][0]
    return live.running.get(deployment, 0), live.target.get(deployment, 0)


def _explain(deployed: dict, live: LiveView, placement: PlacementPolicy, in_flight: int
             ) -> PartPlacement:
    running, target = _replicas(live, "explain")
    where = deployed.get("where", "?")
    room = running * MAX_ONGOING_REQUESTS[PARTS["explain"][0]]
    if running and in_flight < room:
        return PartPlacement("explain", deployed["target"], where,
                             f"{running} explainer replica(s) running ({deployed['reason']})")
    # Saturated (every replica takes as many requests as it can at once) counts as gone:
    # the request would queue behind them, so the profile's rule decides, as when none runs.
    note = (f"explainer saturated: {in_flight} explanations in flight for {running} "
            f"replica(s) taking {room} at once" if running else
            f"explainer: 0 of {target} replica(s) running")
    if deployed["target"] == "cpu":
        return PartPlacement("explain", "cpu", "fraud service replica", f"{note}; the CPU twin "
                             "on the fraud service holds the same model", TWIN, "degrade_to_cpu")
    # No GPU replica answers: a GPU for this request is as good as absent (its node is dead)
    # or busy (alive, but the replica is not running on it), and the profile's rule decides.
    capacity = RayCapacity(nodes=tuple(replace(n, gpus_free=0) for n in live.gpu_nodes()))
    rule = f"rule of {deployed.get('rule', 'profiles.' + SERVE_GPU.name)}"
    try:
        decision = decide_on_ray(StepRequirement("explain", SERVE_GPU), None, capacity,
                                 placement, note=note)
    except PlacementError as error:
        return PartPlacement("explain", "none", "-", f"{error} ({rule})", ESCALATE,
                             "fail_and_escalate")
    if decision.target == "cpu":
        return PartPlacement("explain", "cpu", "fraud service replica",
                             f"{decision.reason} ({rule}): the CPU twin on the fraud service",
                             TWIN, decision.fallback)
    return PartPlacement("explain", "gpu", where, f"{decision.reason} ({rule})", WAIT,
                         decision.fallback)


def _cpu_part(part: str, deployed: dict, live: LiveView, placement: PlacementPolicy
              ) -> PartPlacement:
    running, target = _replicas(live, part)
    if running:
        return PartPlacement(part, "cpu", deployed.get("where", "cpu"),
                             f"{running} replica(s) running ({deployed['reason']})")
    profile = PARTS[part][1]
    rule = placement.profiles.get(profile.name)
    source = deployed.get("rule", f"profiles.{profile.name}")
    why = f"0 of {target} replica(s) running"
    if rule is not None and rule.on_unavailable == "fail_and_escalate":
        return PartPlacement(part, "none", "-", f"{why}; {source}.on_unavailable="
                             "fail_and_escalate", ESCALATE, "fail_and_escalate")
    return PartPlacement(part, "cpu", deployed.get("where", "cpu"),
                         f"{why}; waits within the latency budget ({source})", WAIT, "wait")


def plan_request(deployed: dict[str, dict], live: LiveView, placement: PlacementPolicy,
                 explain: bool = True, explain_in_flight: int = 0) -> dict[str, PartPlacement]:
    """Per part of one request, where it runs and why. `deployed`: each part's placement at
    deploy time (target, where, reason); `explain` False when the intent needs none;
    `explain_in_flight`: explanations this ingress awaits now (saturation)."""
    plan = {part: _cpu_part(part, deployed[part], live, placement)
            for part in ("classify", "retrieve")}
    running, _ = _replicas(live, "fraud")
    plan["fraud"] = PartPlacement("fraud", "cpu", "fraud service (HTTP)",
                                  f"separate service, {running} replica(s) running; called over "
                                  "HTTP with a timeout and retries")
    plan["explain"] = (_explain(deployed["explain"], live, placement, explain_in_flight)
                       if explain else
                       PartPlacement("explain", "none", "-", "the intent needs no explanation",
                                     SKIP))
    return plan
