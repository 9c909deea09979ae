"""Policy as code: promotion, approval, rollback, placement, drift and live-performance rules
in one YAML file, validated at load.

The policy fails closed. A file that cannot be read as intended (unknown key, wrong type,
duplicate key, empty, a gate section missing) or whose rules could never hold anything back
or never let anything through raises `PolicyError` naming the file and the key, which fails
`dagster definitions validate` and the UI load: no run ever executes under a policy nobody
can read, and no missing section ever means "no gate".
"""

from __future__ import annotations

import functools
import re
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from unified_assets.placement.policy import DEFAULT_POLICY as DEFAULT_PLACEMENT
from unified_assets.placement.policy import PlacementPolicy, PolicyError
from unified_assets.serving.profiles import MAX_ONGOING_REQUESTS

DEFAULT_POLICY_PATH = Path(__file__).with_name("policy.yaml")

Metric = Literal["roc_auc", "pr_auc", "pr_auc_lift", "f1", "recall", "precision", "brier",
                 "brier_skill", "latency_ms_per_1k"]
LiveMetric = Literal["roc_auc", "pr_auc", "f1", "recall", "precision", "brier"]  # from labels
HIGHER_IS_BETTER: dict[str, bool] = {
    "roc_auc": True, "pr_auc": True, "pr_auc_lift": True, "f1": True, "recall": True,
    "precision": True, "brier": False, "brier_skill": True, "latency_ms_per_1k": False,
}


def metric_sign(metric: str) -> float:
    """+1 when a larger value of `metric` is better, -1 when smaller is (brier, latency):
    multiply a difference by it and "greater" always means "better"."""
    return 1.0 if HIGHER_IS_BETTER[metric] else -1.0


UNIT_INTERVAL = {"roc_auc", "pr_auc", "f1", "recall", "precision", "brier"}
# Relative to the data's own base rate (ml/metrics.py): brier_skill is 1 - brier / (p(1-p)),
# at most 1 (perfect), 0 for the constant forecast at the positive rate, unbounded below;
# pr_auc_lift is PR AUC / p, 1 for a model ranking at random, at most 1/p.
AT_MOST_ONE = {"brier_skill"}
# A model scoring at random (or forecasting the base rate) has this value whatever the data;
# a floor at or below it holds nothing back (the shuffled-label model of issue 10 scored 0.53).
CHANCE_LEVEL = {"roc_auc": 0.5, "brier_skill": 0.0, "pr_auc_lift": 1.0}
# Segment and live-batch minimums above these make every segment (batch) "too small to
# count", and an uncounted segment passes the fairness gate (an uncounted batch only
# informs): the rule would switch itself off. Past ~1,000 positives a segment's ROC AUC is
# already known to about +-0.01 (its standard error shrinks like 1/sqrt(positives)), so a
# larger minimum buys no precision; 10,000 rows is ten times the shipped holdouts' segments.
MAX_MIN_ROWS = 10_000
MAX_MIN_POSITIVES = 1_000

# Identities: a person's name never contains ':', so `group:NAME` (a group) and
# `policy[:NAME]` (the code itself) can never be mistaken for, or claimed by, a person.
PERSON_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@+-]{0,99}")
GROUP_PREFIX = "group:"
RESERVED_NAMES = {"policy", "ledger"}  # the code's own actors
SIGNATURE_PREFIX = "ed25519:"
REQUIRED_SECTIONS = ("promotion", "approval", "rollback")


def person_problem(name: str) -> str | None:
    """Why `name` is not a person's name (None when it is one)."""
    if name.startswith(GROUP_PREFIX):
        return f"{name!r} is a group, not a person; a decision is taken by one of its members"
    if name in RESERVED_NAMES or name.startswith("policy:"):
        return f"{name!r} is reserved for the code's own automated decisions"
    if not PERSON_NAME.fullmatch(name):
        return (f"{name!r} is not a person's name (letters, digits and . _ @ + -, starting with "
                "a letter or digit)")
    return None


def _person(name: str) -> str:
    problem = person_problem(name)
    if problem:
        raise ValueError(problem)
    return name


def _countable(min_rows: int, min_positives: int, what: str, consequence: str) -> None:
    for key, value, cap in (("min_rows", min_rows, MAX_MIN_ROWS),
                            ("min_positives", min_positives, MAX_MIN_POSITIVES)):
        if value > cap:
            raise ValueError(f"{key}: {value} is more than a {what} can reasonably have (at most "
                             f"{cap}): none would be counted and {consequence}")


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
            raise ValueError(f"min {self.min} exceeds max {self.max}: no model can pass")
        return self


class ImprovementRule(_Strict):
    """How much a challenger must beat the champion by, on the same holdout rows."""

    metric: Metric = "roc_auc"
    min_absolute: float = Field(default=0.0, ge=0.0)
    min_relative: float = Field(default=0.0, ge=0.0, le=1.0)

    @model_validator(mode="after")
    def _passable(self) -> ImprovementRule:
        if self.metric in UNIT_INTERVAL and self.min_absolute >= 1.0:
            raise ValueError(f"min_absolute: {self.min_absolute} is a gain no {self.metric} in "
                             "[0, 1] can make: no challenger could ever replace the champion")
        return self


class SegmentRule(_Strict):
    """Per-segment floor and the largest allowed gap between segments of one column.
    null switches a rule off explicitly; a value that can never trigger is refused."""

    metric: Metric = "roc_auc"
    floor: float | None = None
    max_disparity: float | None = Field(default=None, gt=0.0)
    min_rows: int = Field(default=100, ge=1, description="Smaller segments are not counted.")
    min_positives: int = Field(default=5, ge=1, description="Segments need both classes.")

    @model_validator(mode="after")
    def _meaningful(self) -> SegmentRule:
        _countable(self.min_rows, self.min_positives, "segment", "the fairness gate would pass "
                   "every model")
        if self.metric in UNIT_INTERVAL:
            if self.floor is not None and not 0 < self.floor <= 1:
                raise ValueError(f"floor: {self.floor} is outside (0, 1]"
                                 + (" (0 lets every segment pass; null switches it off)"
                                    if self.floor == 0 else ""))
            if self.max_disparity is not None and self.max_disparity >= 1:
                raise ValueError(f"max_disparity: {self.max_disparity} allows any gap in "
                                 f"{self.metric} (null switches it off)")
        return self


class LeakageRule(_Strict):
    """A candidate that looks too good to be true: a feature encoding the target (or a
    holdout that leaks into training) gives ROC AUC near 1, which the quality floors accept.
    WARN on each evaluation by default; `blocking: true` keeps such a candidate back."""

    blocking: bool = Field(default=False, description="True: a leakage finding fails the gate.")
    max_holdout_auc: float = Field(default=0.999, description="Holdout ROC AUC at or above: flag.")
    max_single_feature_auc: float = Field(
        default=0.98, description="One feature alone separating the target this well "
        "(max(auc, 1-auc) on the holdout): flag, naming the feature.")

    @model_validator(mode="after")
    def _can_trigger_and_can_pass(self) -> LeakageRule:
        for key in ("max_holdout_auc", "max_single_feature_auc"):
            value = getattr(self, key)
            if value <= 0.5:
                raise ValueError(f"{key}: {value} is at or below chance level 0.5: every model "
                                 "(every feature) would be flagged")
            if value > 1.0:
                raise ValueError(f"{key}: {value} is above 1: the guard could never trigger")
        return self


class PromotionPolicy(_Strict):
    operating_threshold: float = Field(default=0.2, gt=0.0, lt=1.0)
    quality: dict[Metric, MetricBound] = Field(
        description="Required: at least one blocking bound, or every model would pass.")
    improvement: ImprovementRule = ImprovementRule()
    segments: SegmentRule = SegmentRule()
    leakage: LeakageRule = LeakageRule()

    @model_validator(mode="after")
    def _quality_gates(self) -> PromotionPolicy:
        for metric, bound in self.quality.items():
            for side in ("min", "max"):
                value = getattr(bound, side)
                if value is None:
                    continue
                where = f"quality.{metric}.{side}: {value}"
                if metric in UNIT_INTERVAL and not 0.0 <= value <= 1.0:
                    raise ValueError(f"{where} is outside [0, 1]: "
                                     + ("no model can pass" if (value > 1) == (side == "min")
                                        else "it lets every model pass"))
                if metric in AT_MOST_ONE and value > 1.0 and side == "min":
                    raise ValueError(f"{where} is above 1, the score of a perfect model: no model "
                                     "can pass")
                if metric in AT_MOST_ONE and value >= 1.0 and side == "max":
                    raise ValueError(f"{where} is at or above 1, the highest possible value: it "
                                     "lets every model pass")
                if side == "min" and metric in {"brier_skill", "pr_auc_lift"} \
                        and value <= CHANCE_LEVEL[metric]:
                    what = ("the constant forecast at the holdout's positive rate"
                            if metric == "brier_skill" else "a model ranking at random")
                    raise ValueError(f"{where} is at or below {CHANCE_LEVEL[metric]}, the score of "
                                     f"{what}: the gate switches itself off (it lets a useless "
                                     "model pass)")
                if side == "min" and value <= CHANCE_LEVEL.get(metric, 0.0):
                    chance = f"chance level {CHANCE_LEVEL[metric]}" if metric in CHANCE_LEVEL \
                        else "the lowest possible value"
                    raise ValueError(f"{where} is at or below {chance}: it lets every model pass")
                if side == "max" and metric in UNIT_INTERVAL and value >= 1.0:
                    raise ValueError(f"{where} is the highest possible value: it lets every "
                                     "model pass")
                if side == "max" and value <= 0.0 and metric not in AT_MOST_ONE:
                    raise ValueError(f"{where}: no model can pass")
        if not any(bound.blocking for bound in self.quality.values()):
            raise ValueError("quality: no blocking bound, so every model would pass the quality "
                             "gate (give at least one bound without `blocking: false`)")
        return self


class RequireHuman(_Strict):
    """When a person must approve a challenger that passed every gate. All off = automatic."""

    always: bool = False
    first_deployment: bool = False
    gain_below: float | None = Field(default=None, ge=0.0, description="In the improvement metric.")
    any_segment_worse: bool = False
    family_changes: bool = False


class ApprovalPolicy(_Strict):
    approvers: list[str] = Field(min_length=1, description="Names or `group:<name>`.")
    groups: dict[str, list[str]] = Field(default_factory=dict)
    keys: dict[str, str] = Field(
        default_factory=dict, description="Each person's public key, `ed25519:<base64>` "
        "(`unified-ai keys new NAME` prints the line).")
    require_signature: bool = Field(
        default=True, description="Refuse decisions not signed with a key listed in `keys`.")
    require_human_when: RequireHuman = RequireHuman()
    request_ttl_hours: float = Field(default=72.0, gt=0.0)

    @field_validator("groups")
    @classmethod
    def _groups_hold_people(cls, groups: dict[str, list[str]]) -> dict[str, list[str]]:
        for name, members in groups.items():
            if not PERSON_NAME.fullmatch(name):
                raise ValueError(f"{name}: not a group name (letters, digits and . _ @ + -)")
            if not members:
                raise ValueError(f"{name}: a group with no members")
            for index, member in enumerate(members):
                problem = person_problem(member)
                if problem:
                    raise ValueError(f"{name}.{index}: {problem}")
        return groups

    @field_validator("keys")
    @classmethod
    def _keys_parse(cls, keys: dict[str, str]) -> dict[str, str]:
        for name, key in keys.items():
            problem = person_problem(name)
            if problem:
                raise ValueError(f"{name}: {problem}")
            try:
                public_key_bytes(key)
            except ValueError as error:
                raise ValueError(f"{name}: {error}") from None
        return keys

    @model_validator(mode="after")
    def _entries_resolve(self) -> ApprovalPolicy:
        for index, entry in enumerate(self.approvers):
            problem = self.entry_problem(entry)
            if problem:
                raise ValueError(f"approvers.{index}: {problem}")
        if self.require_signature:
            for person in sorted(self.expand(self.approvers)):
                if person not in self.keys:
                    raise ValueError(f"keys: approver {person!r} has no key, but require_signature "
                                     "is true, so they could never decide (`unified-ai keys new "
                                     f"{person}` prints the line to add)")
        return self

    def entry_problem(self, entry: str) -> str | None:
        """Why an entry of an allow-list (a person or `group:NAME`) cannot be used."""
        if entry.startswith(GROUP_PREFIX):
            group = entry.removeprefix(GROUP_PREFIX)
            return None if group in self.groups else f"unknown group {entry!r}"
        return person_problem(entry)

    def expand(self, entries: list[str]) -> set[str]:
        """The people an allow-list names: `group:NAME` stands for its members, never itself."""
        people: set[str] = set()
        for entry in entries:
            if entry.startswith(GROUP_PREFIX):
                people.update(self.groups[entry.removeprefix(GROUP_PREFIX)])
            else:
                people.add(entry)
        return people

    def may_approve(self, person: str) -> bool:
        return person_problem(person) is None and person in self.expand(self.approvers)


class RollbackPolicy(_Strict):
    """Who may move `champion` back by hand (the live-performance sensor acts on its own
    evidence, see `live.on_regression`), and where to."""

    by: list[str] = Field(min_length=1, description="Names or `group:<name>` of approval.groups.")
    to_any_approved_version: bool = Field(
        default=False, description="False: only to an earlier champion; true: also to any "
        "approved version.")


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
        _countable(self.min_rows, self.min_positives, "labelled batch", "live performance would "
                   "never act")
        if self.floor is not None and self.metric in UNIT_INTERVAL and not 0 <= self.floor <= 1:
            raise ValueError(f"floor: {self.floor} is outside [0, 1]")
        if self.floor is not None and self.floor == (0.0 if HIGHER_IS_BETTER[self.metric] else 1.0):
            raise ValueError(f"floor: {self.floor} never triggers a retrain (null switches it off)")
        if self.max_drop_vs_previous is not None and self.max_drop_vs_previous >= 1.0:
            raise ValueError(f"max_drop_vs_previous: {self.max_drop_vs_previous} is a drop no "
                             f"{self.metric} in [0, 1] can show (null switches it off)")
        return self


# The Serve deployments of the support workflow, each with the most requests one replica
# takes at once (its `max_ongoing_requests`).
SERVE_DEPLOYMENTS = MAX_ONGOING_REQUESTS


class AutoscalingRule(_Strict):
    """How Ray Serve scales one deployment on traffic (its `autoscaling_config`): between
    `min_replicas` and `max_replicas`, aiming at `target_ongoing_requests` per replica, after
    the load has held for `upscale_delay_s` (up) or `downscale_delay_s` (down). The optional
    `look_back_period_s` and `metrics_interval_s` are Serve's own (30 s and 10 s when null)."""

    min_replicas: int = 1
    max_replicas: int = 2
    target_ongoing_requests: float = 2.0
    upscale_delay_s: float = 15.0
    downscale_delay_s: float = 120.0
    look_back_period_s: float | None = None
    metrics_interval_s: float | None = None

    @field_validator("min_replicas", "max_replicas", mode="before")
    @classmethod
    def _whole_and_positive(cls, value: object, info) -> object:
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{value!r} is not a whole number of replicas of at least 1 (a "
                             "deployment scaled to zero has no replica to route requests to)")
        return value

    @field_validator("target_ongoing_requests", "upscale_delay_s", "downscale_delay_s",
                     "look_back_period_s", "metrics_interval_s", mode="before")
    @classmethod
    def _positive(cls, value: object, info) -> object:
        if value is None and info.field_name in ("look_back_period_s", "metrics_interval_s"):
            return value
        if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0 \
                or value == float("inf"):
            unit = "" if info.field_name == "target_ongoing_requests" else " of seconds"
            raise ValueError(f"{value!r} is not a positive number{unit}")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> AutoscalingRule:
        if self.min_replicas > self.max_replicas:
            raise ValueError(f"min_replicas: {self.min_replicas} exceeds max_replicas: "
                             f"{self.max_replicas}")
        if self.look_back_period_s is not None and self.look_back_period_s <= (
                self.metrics_interval_s or 10.0):
            raise ValueError(f"look_back_period_s: {self.look_back_period_s} is not longer than "
                             f"metrics_interval_s: {self.metrics_interval_s or 10.0} (the window "
                             "would hold at most one reading)")
        return self

    def autoscaling_config(self) -> dict:
        """Ray Serve's `autoscaling_config` of a deployment (the Serve config's key)."""
        return self.model_dump(exclude_none=True)


# Shipped behaviour on a small machine: one replica each at rest, a second under load; the
# ingress mostly waits on the other parts, so it takes more requests per replica; one
# explainer (one GPU: a second replica would wait for a second GPU).
DEFAULT_AUTOSCALING: dict[str, AutoscalingRule] = {
    "SupportIngress": AutoscalingRule(target_ongoing_requests=8),
    "Classifier": AutoscalingRule(target_ongoing_requests=4),
    "Retriever": AutoscalingRule(target_ongoing_requests=4),
    "Explainer": AutoscalingRule(max_replicas=1),
    "FraudModel": AutoscalingRule(target_ongoing_requests=4),
}


class ServingPolicy(_Strict):
    """The support workflow on Ray Serve: autoscaling per deployment, by Serve deployment
    name. A deployment the file leaves out, and any setting a deployment's entry leaves out,
    keep their defaults (DEFAULT_AUTOSCALING)."""

    autoscaling: dict[str, AutoscalingRule] = Field(default_factory=dict)

    @field_validator("autoscaling", mode="before")
    @classmethod
    def _known_deployments(cls, value: object) -> object:
        if isinstance(value, dict):
            unknown = sorted(str(k) for k in value if k not in SERVE_DEPLOYMENTS)
            if unknown:
                raise ValueError(f"unknown deployment(s) {', '.join(map(repr, unknown))}; the "
                                 f"workflow's deployments are {', '.join(SERVE_DEPLOYMENTS)}")
            return {name: {**DEFAULT_AUTOSCALING[name].model_dump(), **rule}
                    if isinstance(rule, dict) else rule for name, rule in value.items()}
        return value

    @model_validator(mode="after")
    def _reachable_targets(self) -> ServingPolicy:
        for name, rule in self.autoscaling.items():
            most = SERVE_DEPLOYMENTS[name]
            if rule.target_ongoing_requests > most:
                raise ValueError(f"autoscaling.{name}.target_ongoing_requests: "
                                 f"{rule.target_ongoing_requests:g} is more than one {name} "
                                 f"replica takes at once ({most}): it would never scale up")
        return self

    def rule(self, deployment: str) -> AutoscalingRule:
        return self.autoscaling.get(deployment) or DEFAULT_AUTOSCALING[deployment]

    def rules(self) -> dict[str, AutoscalingRule]:
        """Every deployment's rule, as written or by default."""
        return {name: self.rule(name) for name in SERVE_DEPLOYMENTS}


class Policy(_Strict):
    version: Literal[1] = 1
    promotion: PromotionPolicy
    approval: ApprovalPolicy
    rollback: RollbackPolicy
    placement: PlacementPolicy = DEFAULT_PLACEMENT
    drift: DriftPolicy = DriftPolicy()
    live: LivePolicy = LivePolicy()
    serving: ServingPolicy = ServingPolicy()

    @model_validator(mode="after")
    def _rollback_names_resolve(self) -> Policy:
        for index, entry in enumerate(self.rollback.by):
            problem = self.approval.entry_problem(entry)
            if problem:
                raise ValueError(f"rollback.by.{index}: {problem}")
        if self.approval.require_signature:
            for person in sorted(self.approval.expand(self.rollback.by)):
                if person not in self.approval.keys:
                    raise ValueError(f"rollback.by: {person!r} has no key in approval.keys, but "
                                     "approval.require_signature is true, so they could never roll "
                                     "back")
        return self

    def may_roll_back(self, person: str) -> bool:
        return person_problem(person) is None and person in self.approval.expand(self.rollback.by)


def public_key_bytes(text: str) -> bytes:
    """The 32 raw bytes of an `ed25519:<base64>` public key; ValueError saying what is wrong."""
    import base64
    import binascii

    if not isinstance(text, str) or not text.startswith(SIGNATURE_PREFIX):
        raise ValueError(f"{text!r} is not a public key: expected {SIGNATURE_PREFIX}<base64>")
    try:
        raw = base64.b64decode(text.removeprefix(SIGNATURE_PREFIX), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"{text!r} is not valid base64 after {SIGNATURE_PREFIX}") from None
    if len(raw) != 32:
        raise ValueError(f"{text!r} holds {len(raw)} bytes; an Ed25519 public key has 32")
    return raw


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML keeps the last of two equal keys, so a second `promotion:` (or a repeated
    `min:` in a bound) silently replaces the first: a gate would vanish without a word.
    This loader refuses duplicate keys at every level, and merge keys (`<<`), whose
    overriding rules hide which value wins."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: dict[object, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                raise yaml.constructor.ConstructorError(
                    None, None, "merge keys (<<) are not allowed in a policy: write the values out",
                    key_node.start_mark)
            key = self.construct_object(key_node, deep=True)
            try:
                first = seen.get(key)
            except TypeError:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} is not a plain value", key_node.start_mark) from None
            if first is not None:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r} (first at line {first}); which one "
                    "applies would be a guess", key_node.start_mark)
            seen[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep=deep)


def read_policy_yaml(text: str) -> object:
    """YAML text to plain data, refusing duplicate and merge keys (yaml.YAMLError)."""
    return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass


def _describe(error: ValidationError) -> str:
    parts = []
    for item in error.errors():
        key = ".".join(str(p) for p in item["loc"])
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] == "missing":
            message = ("missing; the policy must state it (a missing section or rule never "
                       "means 'no gate')")
        parts.append(f"{key}: {message}" if key else message)
    return "; ".join(parts)


def parse_policy(data: object, origin: str = "<policy>") -> Policy:
    if data is None:
        raise PolicyError(f"policy {origin}: empty (no sections, or only comments); a policy must "
                          f"state at least {', '.join(REQUIRED_SECTIONS)}")
    if not isinstance(data, dict):
        raise PolicyError(f"policy {origin}: expected a mapping of sections, got {type(data).__name__}")
    try:
        return Policy.model_validate(data)
    except ValidationError as error:
        raise PolicyError(f"policy {origin}: {_describe(error)}") from None


def load_policy(path: str | Path | None = None) -> Policy:
    """The policy at `path`, or the one shipped with the code when None. Parsed once per
    content of the file: every run's resources and several steps load it, and a policy is
    immutable (the file is read every time: an edit is never missed)."""
    path = Path(path) if path else DEFAULT_POLICY_PATH
    if not path.is_file():
        raise PolicyError(f"policy {path}: file not found")
    return _parsed_policy(str(path), path.read_text())


@functools.lru_cache(maxsize=8)
def _parsed_policy(path: str, text: str) -> Policy:
    try:
        data = read_policy_yaml(text)
    except yaml.YAMLError as error:
        raise PolicyError(f"policy {path}: not valid YAML: {error}") from None
    return parse_policy(data, origin=path)
