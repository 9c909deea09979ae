"""Placement policy: per compute profile, where it may run and what to do when its GPU is not
available. Validated by pydantic (unknown keys are errors) as the `placement` section of the
one policy file (`unified_assets.policy.load_policy`), whose errors name each offending key."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, model_validator

Target = Literal["gpu", "cpu"]
OnUnavailable = Literal["degrade_to_cpu", "wait", "fail_and_escalate"]
SettingValue = str | int | float | bool


class PolicyError(ValueError):
    """A policy that cannot be used (the whole policy file, or its placement section); the
    message names the file and each bad key. The one policy error of the project, defined
    here, below `unified_assets.policy`, which imports this module."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ProfileRule(_Strict):
    """How one compute profile is placed."""

    targets: tuple[Target, ...] = Field(
        default=("gpu", "cpu"), min_length=1,
        description="Where the profile may run, in order of preference.")
    on_unavailable: OnUnavailable = Field(
        default="degrade_to_cpu",
        description="GPU absent, of the wrong type or busy: degrade_to_cpu, wait, fail_and_escalate.")
    degraded_settings: dict[str, SettingValue] = Field(
        default_factory=dict,
        description="Settings recorded (and applied by the step) when a GPU profile runs on CPU.")
    small_input_rows: int | None = Field(
        default=None, ge=1,
        description="Below this many input rows a GPU profile runs on CPU: the GPU would be waste.")
    min_free_gpu_memory_mb: int = Field(
        default=0, ge=0, description="A local CUDA device with less free memory counts as busy.")
    on_oom_profile: str | None = Field(
        default=None,
        description="The larger profile a step of this profile is retried on once after it "
                    "ran out of memory (host or CUDA); none: the step fails.")

    @model_validator(mode="after")
    def _consistent(self) -> ProfileRule:
        if len(set(self.targets)) != len(self.targets):
            raise ValueError(f"targets {list(self.targets)} repeat a target")
        if "cpu" not in self.targets:
            if self.on_unavailable == "degrade_to_cpu":
                raise ValueError("on_unavailable='degrade_to_cpu' needs 'cpu' in targets")
            if self.small_input_rows is not None:
                raise ValueError("small_input_rows needs 'cpu' in targets")
        return self


class ScalableNodePool(_Strict):
    """A Kubernetes node pool the cluster autoscaler can grow (possibly from zero nodes)."""

    gpus_per_node: int = Field(ge=1)
    accelerator: str | None = None


# Profile -> the profile whose rule it follows when the policy names none for it: profiles
# added after a policy was written (reports; the serving replicas of request time) are placed
# by the rule of the work they are like, so no step or replica fails for want of a rule.
FOLLOWS = {"cpu-report": "cpu-light", "serve-cpu": "cpu-light", "serve-gpu": "gpu-training"}


class PlacementPolicy(_Strict):
    profiles: dict[str, ProfileRule]
    scalable_node_pools: dict[str, ScalableNodePool] = Field(
        default_factory=dict,
        description="Node pools that can add GPU nodes: an empty or full pool then means wait "
                    "for the autoscaler rather than unavailable.")
    _followed: dict[str, str] = PrivateAttr(default_factory=dict)  # filled from FOLLOWS

    @model_validator(mode="wrap")
    @classmethod
    def _followers_take_their_rule(cls, data: Any, handler: Any) -> PlacementPolicy:
        """Fill in the rule of each FOLLOWS profile the policy does not name, from the profile
        it follows, and remember it, so placement reasons point at the key that decided."""
        profiles = data.get("profiles") if isinstance(data, dict) else None
        followed = {} if not isinstance(profiles, dict) else {
            name: source for name, source in FOLLOWS.items()
            if name not in profiles and source in profiles}
        if followed:
            data = {**data, "profiles": {**profiles, **{n: profiles[s] for n, s in followed.items()}}}
        policy = handler(data)
        if followed:
            policy._followed = followed
        return policy

    def rule_key(self, profile: str) -> str:
        """The key of the policy as written whose rule places `profile`."""
        return f"profiles.{self._followed.get(profile, profile)}"

    @model_validator(mode="after")
    def _larger_profiles_known(self) -> PlacementPolicy:
        for name, rule in self.profiles.items():
            if rule.on_oom_profile is not None and rule.on_oom_profile not in self.profiles:
                raise ValueError(f"profiles.{name}.on_oom_profile={rule.on_oom_profile!r} is not "
                                 f"a profile of this policy ({sorted(self.profiles)})")
            if rule.on_oom_profile == name:
                raise ValueError(f"profiles.{name}.on_oom_profile names the profile itself")
        return self


DEFAULT_POLICY = PlacementPolicy(
    profiles={
        "cpu-light": ProfileRule(targets=("cpu",), on_unavailable="wait"),
        "cpu-report": ProfileRule(targets=("cpu",), on_unavailable="wait"),
        "cpu-training": ProfileRule(targets=("cpu",), on_unavailable="wait"),
        "gpu-training": ProfileRule(
            targets=("gpu", "cpu"),
            on_unavailable="degrade_to_cpu",
            degraded_settings={"device": "cpu"},
            small_input_rows=10_000,
        ),
    }
)
