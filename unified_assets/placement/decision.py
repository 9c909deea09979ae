"""What the planner takes (`StepRequirement`) and gives (`Decision` per step, `Plan`)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Literal

from unified_assets.compute import PROFILE_TAG, PROFILES, ComputeProfile

Target = Literal["gpu", "cpu"]
Fallback = Literal["none", "degrade_to_cpu", "wait"]
Stage = Literal["plan", "start"]


class PlacementError(RuntimeError):
    """No acceptable placement. `retryable` is True when a later attempt may succeed (a GPU
    that vanished at step start under a `wait` policy)."""

    def __init__(self, message: str, *, retryable: bool = False) -> None:
        super().__init__(message)
        self.retryable = retryable


@dataclass(frozen=True)
class StepRequirement:
    """One step to place. `op_name` keys `per_step_k8s_config` (defaults to the step key, as
    for asset steps); `input_rows` feeds the small-input rule."""

    step_key: str
    profile: ComputeProfile
    input_rows: int | None = None
    asset_key: str | None = None
    op_name: str | None = None

    @property
    def op(self) -> str:
        return self.op_name or self.step_key

    @classmethod
    def from_tags(cls, step_key: str, tags: Mapping[str, str], *, op_name: str | None = None,
                  asset_key: str | None = None, input_rows: int | None = None,
                  profiles: Mapping[str, ComputeProfile] = PROFILES) -> StepRequirement | None:
        """The requirement declared by a step's tags (`unified-ai/profile`); None if the step
        declares no profile. An unknown profile name is an error."""
        name = tags.get(PROFILE_TAG)
        if name is None:
            return None
        if name not in profiles:
            raise PlacementError(f"step {step_key!r}: unknown compute profile {name!r} "
                                 f"(known: {sorted(profiles)})")
        return cls(step_key, profiles[name], input_rows, asset_key, op_name)


@dataclass(frozen=True)
class Alternative:
    target: Target
    rejected: str


@dataclass(frozen=True)
class Decision:
    """Where one step runs and why. `where` is the device or node pool ("cuda:0", "k8s node
    pool gpu", "ray pool gpu", "cpu"); `pool` the Dagster concurrency pool the step claims (static on the
    asset); `settings` what the step applies when a GPU profile runs on CPU."""

    requirement: StepRequirement
    target: Target
    where: str
    reason: str
    fallback: Fallback = "none"
    settings: Mapping[str, str | int | float | bool] = field(default_factory=dict)
    alternatives: tuple[Alternative, ...] = ()
    stage: Stage = "plan"

    @property
    def step_key(self) -> str:
        return self.requirement.step_key

    @property
    def profile(self) -> ComputeProfile:
        return self.requirement.profile

    @property
    def pool(self) -> str:
        return self.requirement.profile.pool

    @property
    def degraded(self) -> bool:
        """A GPU profile placed on CPU (by fallback, small input or policy targets)."""
        return self.profile.device == "gpu" and self.target == "cpu"

    @property
    def effective_profile(self) -> ComputeProfile:
        """The profile the step really runs with: its CPU twin when degraded."""
        return self.profile.as_cpu() if self.degraded else self.profile


@dataclass(frozen=True)
class Plan:
    decisions: tuple[Decision, ...]
    snapshot_summary: str = ""

    def __iter__(self) -> Iterator[Decision]:
        return iter(self.decisions)

    def __len__(self) -> int:
        return len(self.decisions)

    def __getitem__(self, step_key: str) -> Decision:
        for decision in self.decisions:
            if decision.step_key == step_key:
                return decision
        raise KeyError(step_key)

    def counts(self) -> dict[str, int]:
        """Steps per target and per fallback applied."""
        out = {"steps": len(self.decisions), "gpu": 0, "cpu": 0, "degraded": 0, "wait": 0}
        for d in self.decisions:
            out[d.target] += 1
            out["degraded"] += d.degraded
            out["wait"] += d.fallback == "wait"
        return out
