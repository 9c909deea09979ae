"""Policy as code: promotion, approval, placement, drift and live-performance rules in one
YAML file, validated at load.

A bad policy (unknown key, wrong type, impossible value) raises `PolicyError` naming the
file and the key, which fails `dagster definitions validate` and the UI load, so no run
ever executes under a policy nobody can read.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from unified_assets.ml.dataset_spec import describe_validation_error
from unified_assets.placement.policy import DEFAULT_POLICY as DEFAULT_PLACEMENT
from unified_assets.placement.policy import PlacementPolicy

DEFAULT_POLICY_PATH = Path(__file__).with_name("policy.yaml")

Metric = Literal["roc_auc", "pr_auc", "f1", "recall", "precision", "brier", "latency_ms_per_1k"]
LiveMetric = Literal["roc_auc", "pr_auc", "f1", "recall", "precision", "brier"]  # from labels
HIGHER_IS_BETTER: dict[str, bool] = {
    "roc_auc": True, "pr_auc": True, "f1": True, "recall": True, "precision": True,
    "brier": False, "latency_ms_per_1k": False,
}
UNIT_INTERVAL = {"roc_auc", "pr_auc", "f1", "recall", "precision", "brier"}


class PolicyError(ValueError):
    """A policy file that cannot be used; the message names the file and the key."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class MetricBound(_Strict):
    """A floor (`min`) and/or ceiling (`max`) on one holdout metric."""

    min: float | None = None
    max: float | None = None
    blocking: bool = Field(default=True, description="False: the rule only informs (WARN).")

    @model_validator(mode="after")
    def _has_a_bound(self) -> MetricBound:
        if self.min is None and self.max is None:
            raise ValueError("give min and/or max")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min {self.min} exceeds max {self.max}")
        return self


class ImprovementRule(_Strict):
    """How much a challenger must beat the champion by, on the same holdout rows."""

    metric: Metric = "roc_auc"
    min_absolute: float = Field(default=0.0, ge=0.0)
    min_relative: float = Field(default=0.0, ge=0.0, le=1.0)


class SegmentRule(_Strict):
    """Per-segment floor and the largest allowed gap between segments of one column."""

    metric: Metric = "roc_auc"
    floor: float | None = None
    max_disparity: float | None = Field(default=None, ge=0.0)
    min_rows: int = Field(default=100, ge=1, description="Smaller segments are not counted.")
    min_positives: int = Field(default=5, ge=1, description="Segments need both classes.")


class PromotionPolicy(_Strict):
    operating_threshold: float = Field(default=0.2, gt=0.0, lt=1.0)
    quality: dict[Metric, MetricBound] = Field(default_factory=dict)
    improvement: ImprovementRule = ImprovementRule()
    segments: SegmentRule = SegmentRule()

    @model_validator(mode="after")
    def _bounds_are_possible(self) -> PromotionPolicy:
        for metric, bound in self.quality.items():
            if metric in UNIT_INTERVAL:
                for side in ("min", "max"):
                    value = getattr(bound, side)
                    if value is not None and not 0.0 <= value <= 1.0:
                        raise ValueError(f"quality.{metric}.{side}: {value} is outside [0, 1]")
        floor = self.segments.floor
        if floor is not None and self.segments.metric in UNIT_INTERVAL and not 0 <= floor <= 1:
            raise ValueError(f"segments.floor: {floor} is outside [0, 1]")
        return self


class RequireHuman(_Strict):
    """When a person must approve a challenger that passed every gate. All off = automatic."""

    always: bool = False
    first_deployment: bool = False
    gain_below: float | None = Field(default=None, ge=0.0, description="In the improvement metric.")
    any_segment_worse: bool = False
    family_changes: bool = False


class ApprovalPolicy(_Strict):
    approvers: list[str] = Field(default_factory=list, description="Names or `group:<name>`.")
    groups: dict[str, list[str]] = Field(default_factory=dict)
    require_human_when: RequireHuman = RequireHuman()
    request_ttl_hours: float = Field(default=72.0, gt=0.0)

    @model_validator(mode="after")
    def _groups_exist(self) -> ApprovalPolicy:
        for index, entry in enumerate(self.approvers):
            if entry.startswith("group:") and entry.removeprefix("group:") not in self.groups:
                raise ValueError(f"approvers.{index}: unknown group {entry!r}")
        return self

    def may_approve(self, person: str) -> bool:
        if person in self.approvers:
            return True
        return any(
            entry.startswith("group:") and person in self.groups[entry.removeprefix("group:")]
            for entry in self.approvers
        )


class DriftPolicy(_Strict):
    """When drift asks for a retrain. Thresholds default to Evidently's DataDriftPreset."""

    drift_share: float = Field(default=0.5, gt=0.0, le=1.0,
                               description="Share of drifted columns that makes a batch drifted.")
    num_threshold: float | None = Field(default=None, gt=0.0)
    cat_threshold: float | None = Field(default=None, gt=0.0)
    retrain_cron: str | None = Field(default=None, description="Optional freshness floor.")
    bootstrap_batches: int | None = Field(
        default=3, ge=1, description="With no champion yet, train once this many valid, labelled "
        "batches are ingested; null: the first training is started by a person.")

    @model_validator(mode="after")
    def _cron_is_valid(self) -> DriftPolicy:
        if self.retrain_cron is not None:
            from dagster._utils.schedules import is_valid_cron_string

            if not is_valid_cron_string(self.retrain_cron):
                raise ValueError(f"retrain_cron: {self.retrain_cron!r} is not a cron expression")
        return self


class LivePolicy(_Strict):
    """What the champion's live numbers (on batches whose labels landed) must stay above."""

    metric: LiveMetric = "roc_auc"
    floor: float | None = Field(default=None, description="Below it: request a retrain.")
    max_drop_vs_previous: float | None = Field(
        default=None, ge=0.0,
        description="The previous champion beats the champion on the same labelled rows by "
        "more than this: roll back.")
    on_regression: Literal["rollback", "incident"] = Field(
        default="rollback", description="incident: record and escalate; a person rolls back.")
    min_rows: int = Field(default=200, ge=1, description="Smaller batches only inform.")
    min_positives: int = Field(default=5, ge=1, description="Both classes are needed.")

    @model_validator(mode="after")
    def _floor_is_possible(self) -> LivePolicy:
        if self.floor is not None and self.metric in UNIT_INTERVAL and not 0 <= self.floor <= 1:
            raise ValueError(f"floor: {self.floor} is outside [0, 1]")
        return self


class Policy(_Strict):
    version: Literal[1] = 1
    promotion: PromotionPolicy = PromotionPolicy()
    approval: ApprovalPolicy = ApprovalPolicy()
    placement: PlacementPolicy = DEFAULT_PLACEMENT
    drift: DriftPolicy = DriftPolicy()
    live: LivePolicy = LivePolicy()


def parse_policy(data: object, origin: str = "<policy>") -> Policy:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise PolicyError(f"{origin}: expected a mapping of sections, got {type(data).__name__}")
    try:
        return Policy.model_validate(data)
    except ValidationError as error:
        raise PolicyError(f"policy {origin}: {describe_validation_error(error)}") from None


def load_policy(path: str | Path | None = None) -> Policy:
    """The policy at `path`, or the one shipped with the code when None."""
    path = Path(path) if path else DEFAULT_POLICY_PATH
    if not path.is_file():
        raise PolicyError(f"policy {path}: file not found")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise PolicyError(f"policy {path}: not valid YAML: {error}") from None
    return parse_policy(data, origin=str(path))
