"""The planner: (requirements, capacity snapshot, policy) -> one `Decision` per step, before
anything runs; `revalidate` re-checks a GPU decision when the step starts. Pure and fast: the
snapshot is read once per distinct requirement, nothing is probed here.

GPU steps are judged independently against the snapshot (no reservation between steps of one
plan): steps of a run queue on the Dagster pool, and each re-validates when it starts."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, replace
from functools import lru_cache
from typing import Literal

from unified_assets.compute import GPU_NODE_POOL, ComputeProfile
from unified_assets.placement.decision import (
    Alternative,
    Decision,
    Fallback,
    PlacementError,
    Plan,
    StepRequirement,
)
from unified_assets.placement.policy import DEFAULT_POLICY, PlacementPolicy, ProfileRule
from unified_assets.placement.snapshot import (
    CapacitySnapshot,
    HostCapacity,
    K8sCapacity,
    PoolOccupancy,
    RayCapacity,
)

Status = Literal["free", "busy", "absent", "scalable"]
MAX_LISTED_PROBLEMS = 20


@dataclass(frozen=True)
class GpuCheck:
    """Whether a GPU placement is possible now; `pool_full` when only the Dagster pool blocks;
    `queueable` when a request for it would queue in the runtime until capacity appears (a
    Ray job waits PENDING until a GPU node joins its pool), so `wait` can queue on it."""

    status: Status
    detail: str
    where: str = ""
    pool_full: bool = False
    queueable: bool = False


@lru_cache(maxsize=256)
def _tokens(name: str) -> frozenset[str]:
    return frozenset(re.split(r"[^a-z0-9]+", name.lower())) - {"", "nvidia"}


def accelerator_matches(wanted: str, name: str) -> bool:
    """'nvidia-l4' matches 'NVIDIA L4' but not 'NVIDIA L40S'; 'nvidia-tesla-t4' matches 'Tesla T4'."""
    want = _tokens(wanted)
    return bool(want) and want <= _tokens(name)


def host_gpu_check(profile: ComputeProfile, rule: ProfileRule, host: HostCapacity) -> GpuCheck:
    """Whether this host's CUDA devices can take the step now."""
    devices = host.cuda_devices
    if not devices:
        note = f" ({host.cuda_note})" if host.cuda_note else ""
        return GpuCheck("absent", f"no CUDA device on host {host.hostname}{note}")
    if profile.accelerator:
        devices = tuple(d for d in devices if accelerator_matches(profile.accelerator, d.name))
        if not devices:
            have = ", ".join(sorted({d.name for d in host.cuda_devices}))
            return GpuCheck("absent", f"accelerator {profile.accelerator} not on host "
                                      f"{host.hostname} (has {have})")
    if len(devices) < profile.gpus:
        return GpuCheck("absent", f"host {host.hostname} has {len(devices)} suitable CUDA "
                                  f"device(s), the step needs {profile.gpus}")
    roomy = sorted((d for d in devices if d.free_mb >= rule.min_free_gpu_memory_mb),
                   key=lambda d: (-d.free_mb, d.index))
    if len(roomy) < profile.gpus:
        return GpuCheck("busy", f"{len(devices) - len(roomy)} of {len(devices)} CUDA device(s) "
                                f"on {host.hostname} have < {rule.min_free_gpu_memory_mb} MiB free",
                        "cuda")
    chosen = sorted(roomy[: profile.gpus], key=lambda d: d.index)
    where = ",".join(f"cuda:{d.index}" for d in chosen)
    names = ", ".join(f"{d.name} {d.free_mb} MiB free" for d in chosen)
    return GpuCheck("free", f"{where} on {host.hostname} ({names})", where)


def k8s_gpu_check(profile: ComputeProfile, k8s: K8sCapacity) -> GpuCheck:
    """Whether a node of the GPU node pool has the step's GPUs free now."""
    pool = f"k8s node pool {GPU_NODE_POOL}"
    nodes = [n for n in k8s.pool(GPU_NODE_POOL) if n.schedulable]
    if not nodes:
        return GpuCheck("absent", f"{pool} has no schedulable node")
    if profile.accelerator:
        nodes = [n for n in nodes if n.accelerator
                 and accelerator_matches(profile.accelerator, n.accelerator)]
        if not nodes:
            have = ", ".join(sorted({n.accelerator or "unlabelled" for n in k8s.pool(GPU_NODE_POOL)}))
            return GpuCheck("absent", f"accelerator {profile.accelerator} not in {pool} (has {have})")
    big = [n for n in nodes if n.gpus_allocatable >= profile.gpus]
    if not big:
        largest = max(n.gpus_allocatable for n in nodes)
        return GpuCheck("absent", f"no node in {pool} has {profile.gpus} GPU(s) (largest: {largest})")
    free = sorted((n for n in big if n.gpus_free >= profile.gpus),
                  key=lambda n: (-n.gpus_free, n.name))
    if not free:
        total_free = sum(n.gpus_free for n in big)
        total = sum(n.gpus_allocatable for n in big)
        return GpuCheck("busy", f"{pool}: no node with {profile.gpus} free GPU(s) "
                                f"({total_free}/{total} GPUs free)", pool)
    best = free[0]
    return GpuCheck("free", f"{pool}: node {best.name} has {best.gpus_free}/"
                            f"{best.gpus_allocatable} GPU(s) free", pool)


def ray_pool_name(pool: str = GPU_NODE_POOL) -> str:
    return f"ray pool {pool}"


def ray_gpu_check(profile: ComputeProfile, ray: RayCapacity) -> GpuCheck:
    """Whether a live node of the Ray GPU pool has the step's GPUs free now. Anything short of
    that is `queueable`: Ray keeps a job for the pool PENDING until a node there can take it."""
    pool = ray_pool_name()
    nodes = [n for n in ray.pool(GPU_NODE_POOL) if n.alive]
    if not nodes:
        lost = [n.short_id for n in ray.pool(GPU_NODE_POOL) if not n.alive]
        why = f" (node(s) {', '.join(lost)} dead)" if lost else ""
        return GpuCheck("absent", f"{pool} has no live node{why}", pool, queueable=True)
    if profile.accelerator:
        nodes = [n for n in nodes if n.accelerator
                 and accelerator_matches(profile.accelerator, n.accelerator)]
        if not nodes:
            have = ", ".join(sorted({n.accelerator or "unlabelled" for n in ray.pool(GPU_NODE_POOL)}))
            return GpuCheck("absent", f"accelerator {profile.accelerator} not in {pool} (has {have})",
                            pool, queueable=True)
    big = [n for n in nodes if n.gpus_total >= profile.gpus]
    if not big:
        largest = max(n.gpus_total for n in nodes)
        return GpuCheck("absent", f"no node in {pool} has {profile.gpus} GPU(s) (largest: "
                                  f"{largest:g})", pool, queueable=True)
    free = sorted((n for n in big if n.gpus_free >= profile.gpus),
                  key=lambda n: (-n.gpus_free, n.node_id))
    # Jobs already waiting for GPUs go first: Ray gives a freed GPU to them, not to this step.
    if free and sum(n.gpus_free for n in free) - ray.pending_gpus < profile.gpus:
        free = []
    if not free:
        total_free, total = sum(n.gpus_free for n in big), sum(n.gpus_total for n in big)
        return GpuCheck("busy", f"{pool}: no node with {profile.gpus} free GPU(s) ({total_free:g}/"
                                f"{total:g} GPUs free, {ray.pending_jobs} job(s) pending for "
                                f"{ray.pending_gpus:g} GPU(s))",
                        pool, queueable=True)
    best = free[0]
    return GpuCheck("free", f"{pool}: node {best.short_id} has {best.gpus_free:g}/"
                            f"{best.gpus_total:g} GPU(s) free", pool)


class _View:
    """The snapshot seen through the policy, with per-requirement results cached."""

    def __init__(self, snapshot: CapacitySnapshot, policy: PlacementPolicy) -> None:
        self.snapshot = snapshot
        self.policy = policy
        scalable = [p.gpus_per_node for p in policy.scalable_node_pools.values()]
        self.largest_unit = max([snapshot.largest_gpu_unit(), *scalable])
        self._cache: dict[tuple, GpuCheck] = {}

    def gpu_check(self, profile: ComputeProfile, rule: ProfileRule) -> GpuCheck:
        key = (profile.gpus, profile.accelerator, profile.pool, rule.min_free_gpu_memory_mb)
        if key not in self._cache:
            self._cache[key] = self._gpu_check(profile, rule)
        return self._cache[key]

    def _gpu_check(self, profile: ComputeProfile, rule: ProfileRule) -> GpuCheck:
        k8s, ray = self.snapshot.kubernetes, self.snapshot.ray
        if ray is not None:
            check = ray_gpu_check(profile, ray)
        elif k8s is not None:
            check = k8s_gpu_check(profile, k8s)
        else:
            check = host_gpu_check(profile, rule, self.snapshot.host)
        if check.status == "free":
            occupancy = self.occupancy(profile.pool)
            if occupancy is not None and occupancy.full:
                return GpuCheck("busy", occupancy.describe(), check.where, pool_full=True)
            return check
        scalable = self.policy.scalable_node_pools.get(GPU_NODE_POOL)
        if (k8s is not None and scalable is not None and scalable.gpus_per_node >= profile.gpus
                and (not profile.accelerator or (scalable.accelerator and accelerator_matches(
                    profile.accelerator, scalable.accelerator)))):
            return GpuCheck("scalable", f"{check.detail}; the autoscaler can add a node to "
                                        f"{GPU_NODE_POOL} ({scalable.gpus_per_node} GPU(s) each)",
                            f"k8s node pool {GPU_NODE_POOL}")
        return check

    def occupancy(self, pool: str) -> PoolOccupancy | None:
        instance = self.snapshot.instance
        return instance.pools.get(pool) if instance is not None else None


def _rule(policy: PlacementPolicy, step: StepRequirement) -> ProfileRule:
    rule = policy.profiles.get(step.profile.name)
    if rule is None:
        raise PlacementError(f"step {step.step_key}: no placement rule for profile "
                             f"{step.profile.name!r} (policy profiles: {sorted(policy.profiles)})")
    return rule


def _on_cpu(step: StepRequirement, rule: ProfileRule, reason: str, fallback: Fallback = "none",
            alternatives: tuple[Alternative, ...] = ()) -> Decision:
    settings = dict(rule.degraded_settings) if step.profile.device == "gpu" else {}
    return Decision(step, "cpu", "cpu", reason, fallback, settings, alternatives)


def _cpu_profile(step: StepRequirement, rule: ProfileRule, view: _View) -> Decision:
    name = step.profile.name
    if "cpu" not in rule.targets:
        raise PlacementError(f"step {step.step_key}: profile {name} is a cpu profile but "
                             f"policy profiles.{name}.targets={list(rule.targets)} excludes cpu")
    occupancy = view.occupancy(step.profile.pool)
    if occupancy is None or not occupancy.full:
        detail = f"; {occupancy.describe()}" if occupancy is not None else ""
        return _on_cpu(step, rule, f"cpu profile{detail}")
    if rule.on_unavailable == "fail_and_escalate":
        raise PlacementError(f"step {step.step_key}: profile {name}: {occupancy.describe()}; "
                             f"policy profiles.{name}.on_unavailable=fail_and_escalate")
    return _on_cpu(step, rule, f"cpu profile; {occupancy.describe()}: waits for a slot", "wait")


def _unavailable(step: StepRequirement, rule: ProfileRule, check: GpuCheck,
                 stage: str = "") -> Decision:
    """Apply `on_unavailable` to a GPU that is absent or busy."""
    name, key = step.profile.name, step.step_key
    rule_text = f"policy profiles.{name}.on_unavailable={rule.on_unavailable}"
    gpu_rejected = (Alternative("gpu", f"{check.status}: {check.detail}"),)
    if rule.on_unavailable == "degrade_to_cpu":
        note = ""
        if check.pool_full:
            note = f"; the step still claims Dagster pool {step.profile.pool}"
        return _on_cpu(step, rule, f"{stage}GPU {check.status} ({check.detail}): degraded to cpu "
                                   f"by {rule_text}{note}", "degrade_to_cpu", gpu_rejected)
    if rule.on_unavailable == "wait" and (check.status == "busy" or check.queueable) \
            and (not stage or check.queueable):
        cpu = (Alternative("cpu", f"{rule_text}: waits for the GPU instead"),) \
            if "cpu" in rule.targets else ()
        queue = "; queued on the pool until a node can take it" if check.queueable else ""
        return Decision(step, "gpu", check.where or "gpu", f"{stage}GPU {check.status} "
                        f"({check.detail}): waits by {rule_text}{queue}", "wait", {}, cpu)
    if rule.on_unavailable == "wait":
        why = ("waiting in the step would hold its slot; retry the step"
               if stage else "waiting would never end")
        raise PlacementError(f"step {key}: profile {name} needs {step.profile.gpus} GPU(s) but "
                             f"{stage}{check.detail}; {rule_text}: {why}", retryable=bool(stage))
    raise PlacementError(f"step {key}: profile {name} needs {step.profile.gpus} GPU(s) but "
                         f"{stage}GPU {check.status} ({check.detail}); {rule_text}: escalate")


def _gpu_profile(step: StepRequirement, rule: ProfileRule, view: _View) -> Decision:
    profile, name = step.profile, step.profile.name
    if view.largest_unit and profile.gpus > view.largest_unit:
        raise PlacementError(
            f"step {step.step_key}: profile {name} asks {profile.gpus} GPUs per step but the "
            f"largest host/node in the snapshot has {view.largest_unit}: impossible anywhere")
    if "gpu" not in rule.targets:
        return _on_cpu(step, rule, f"policy profiles.{name}.targets={list(rule.targets)}: "
                                   "GPU not allowed", alternatives=(
                                       Alternative("gpu", "excluded by policy targets"),))
    rows, small = step.input_rows, rule.small_input_rows
    if rows is not None and small is not None and rows < small:
        why = f"input {rows} rows < small_input_rows {small}: a GPU would be waste"
        return _on_cpu(step, rule, why, alternatives=(Alternative("gpu", why),))
    check = view.gpu_check(profile, rule)
    if check.status in ("free", "scalable"):
        cpu = (Alternative("cpu", "GPU placement available; cpu is only the fallback"),) \
            if "cpu" in rule.targets else ()
        if check.status == "free":
            return Decision(step, "gpu", check.where, f"GPU free: {check.detail}", "none", {}, cpu)
        return Decision(step, "gpu", check.where, f"GPU pending scale-up: {check.detail}",
                        "wait", {}, cpu)
    return _unavailable(step, rule, check)


def decide(step: StepRequirement, snapshot: CapacitySnapshot,
           policy: PlacementPolicy = DEFAULT_POLICY) -> Decision:
    """The decision for one step (raises `PlacementError`)."""
    return _decide(step, _View(snapshot, policy), policy)


def _decide(step: StepRequirement, view: _View, policy: PlacementPolicy) -> Decision:
    rule = _rule(policy, step)
    if step.profile.device == "cpu":
        return _cpu_profile(step, rule, view)
    return _gpu_profile(step, rule, view)


def plan(steps: Iterable[StepRequirement], snapshot: CapacitySnapshot,
         policy: PlacementPolicy = DEFAULT_POLICY) -> Plan:
    """Place every step, or raise one `PlacementError` listing every step that cannot be
    placed (impossible requirement, fail_and_escalate, wait with no GPU)."""
    view = _View(snapshot, policy)
    decisions: list[Decision] = []
    problems: list[str] = []
    seen: set[str] = set()
    for step in steps:
        if step.step_key in seen:
            problems.append(f"step {step.step_key}: listed twice")
            continue
        seen.add(step.step_key)
        try:
            decisions.append(_decide(step, view, policy))
        except PlacementError as exc:
            problems.append(str(exc))
    if problems:
        listed = problems[:MAX_LISTED_PROBLEMS]
        more = len(problems) - len(listed)
        raise PlacementError(f"cannot place {len(problems)} step(s):\n  - " + "\n  - ".join(listed)
                             + (f"\n  ... and {more} more" if more else ""))
    return Plan(tuple(decisions), snapshot.summary())


def revalidate(decision: Decision, fresh: CapacitySnapshot,
               policy: PlacementPolicy = DEFAULT_POLICY) -> Decision:
    """The final decision when the step starts. A GPU decision is re-checked against this
    host's CUDA devices (the step already holds its pool slot, so pools are not re-read); if
    the GPU is gone the profile's `on_unavailable` applies again (`wait` raises a retryable
    `PlacementError`). CPU decisions stand."""
    if decision.target == "cpu":
        return replace(decision, stage="start")
    step = decision.requirement
    rule = _rule(policy, step)
    check = host_gpu_check(step.profile, rule, fresh.host)
    if check.status == "free":
        return replace(decision, where=check.where, stage="start",
                       reason=f"{decision.reason}; at start: GPU present ({check.detail})")
    return replace(_unavailable(step, rule, check, stage="at start: "), stage="start")


def decide_on_ray(step: StepRequirement, planned: Decision | None, ray: RayCapacity,
                  policy: PlacementPolicy = DEFAULT_POLICY, note: str = "") -> Decision:
    """The decision a Ray job is submitted with, made when the step launches: the planned one
    (from the run tags) with a GPU placement re-checked against the Ray cluster now, or one
    made now if the run carries no plan for this step. `note` (e.g. a GPU node lost during an
    earlier attempt) is put in front of the reason. Raises `PlacementError` when the policy
    forbids the launch (fail_and_escalate, or no GPU pool under a policy without cpu)."""
    try:
        if planned is None or planned.requirement.profile != step.profile:
            decision = decide(step, CapacitySnapshot(ray=ray), policy)
        elif planned.target == "cpu":
            decision = planned
        else:
            check = ray_gpu_check(step.profile, ray)
            if check.status == "free":
                decision = replace(planned, where=check.where, reason=f"{planned.reason}; "
                                   f"at launch: GPU free ({check.detail})")
            else:
                decision = _unavailable(planned.requirement, _rule(policy, step), check,
                                        stage="at launch: ")
    except PlacementError as error:
        if note:
            raise PlacementError(f"{note}; {error}", retryable=error.retryable) from None
        raise
    if note:
        decision = replace(decision, reason=f"{note}; {decision.reason}")
    return decision
