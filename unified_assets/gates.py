"""Promotion gates: judge an evaluation report against the policy. Pure; no dagster.

Each gate returns rows of (what, value, threshold, margin, passed) so the check in the UI
shows the number against the policy, and a one-line message saying by how much it failed.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from unified_assets.policy import PromotionPolicy, metric_sign
from unified_assets.values import EvaluationReport

QUALITY, IMPROVEMENT, FAIRNESS, INFORMATIONAL, LEAKAGE = (
    "quality_floors", "beats_champion", "segment_fairness", "informational_metrics", "leakage",
)
BLOCKING_GATES = (QUALITY, IMPROVEMENT, FAIRNESS)
ALL_GATES = (*BLOCKING_GATES, INFORMATIONAL, LEAKAGE)


@dataclass(frozen=True)
class CandidateFailure:
    """A candidate that could not be trained (the model asset's value instead of a registered
    version): evaluation turns it into a report that fails every gate, so the other
    candidates still reach selection in the same run."""

    family: str
    model_name: str
    error: str


@dataclass
class GateResult:
    name: str
    passed: bool
    message: str
    rows: list[dict] = field(default_factory=list)


@dataclass
class GateVerdict:
    family: str
    version: str | None
    gates: dict[str, GateResult]
    blocking: tuple[str, ...] = BLOCKING_GATES  # plus LEAKAGE when the policy blocks on it
    error: str | None = None  # the candidate could not be trained or evaluated

    @property
    def passed(self) -> bool:
        return self.error is None and all(self.gates[name].passed for name in self.blocking)

    def failures(self) -> list[str]:
        if self.error:
            return [f"not evaluated: {self.error}"]
        return [f"{n}: {self.gates[n].message}" for n in self.blocking if not self.gates[n].passed]


def _bound_rows(report: EvaluationReport, policy: PromotionPolicy, blocking: bool) -> list[dict]:
    rows = []
    for metric, bound in policy.quality.items():
        if bound.blocking != blocking:
            continue
        value = report.overall.get(metric)
        for side, threshold in (("min", bound.min), ("max", bound.max)):
            if threshold is None:
                continue
            if value is None:
                rows.append({"metric": metric, "value": None, "rule": f"{side} {threshold}",
                             "margin": None, "passed": False})
                continue
            margin = value - threshold if side == "min" else threshold - value
            rows.append({"metric": metric, "value": value, "rule": f"{side} {threshold}",
                         "margin": margin, "passed": margin >= 0})
    return rows


def _summary(rows: list[dict], ok: str) -> str:
    failed = [r for r in rows if not r["passed"]]
    if not failed:
        return ok
    return "; ".join(
        f"{r['metric']}={_fmt(r['value'])} violates {r['rule']} by {_fmt(abs(r['margin']))}"
        if r["margin"] is not None else f"{r['metric']} is undefined (needs {r['rule']})"
        for r in failed
    )


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def quality_gate(report: EvaluationReport, policy: PromotionPolicy, blocking: bool = True) -> GateResult:
    rows = _bound_rows(report, policy, blocking)
    name = QUALITY if blocking else INFORMATIONAL
    message = _summary(rows, f"all {len(rows)} {'gating' if blocking else 'informational'} "
                             "metric bounds met")
    return GateResult(name, all(r["passed"] for r in rows), message, rows)


def improvement_gate(report: EvaluationReport, policy: PromotionPolicy) -> GateResult:
    rule = policy.improvement
    champion = report.champion
    if champion is None:
        return GateResult(IMPROVEMENT, True, "no champion yet: nothing to beat, passes")
    value = report.overall.get(rule.metric)
    baseline = champion.overall.get(rule.metric)
    if value is None or baseline is None:
        return GateResult(IMPROVEMENT, False, f"{rule.metric} undefined for candidate or champion")
    sign = metric_sign(rule.metric)
    gain = sign * (value - baseline)
    required = max(rule.min_absolute, rule.min_relative * abs(baseline))
    row = {"metric": rule.metric, "value": value, "champion": baseline,
           "champion_version": champion.version, "gain": gain, "required_gain": required,
           "passed": gain >= required}
    if row["passed"]:
        message = (f"{rule.metric} {value:.4f} beats champion v{champion.version} "
                   f"({baseline:.4f}) by {gain:.4f} >= {required:.4f}")
    else:
        message = (f"{rule.metric} {value:.4f} vs champion v{champion.version} {baseline:.4f}: "
                   f"gain {gain:+.4f} is short of the required {required:.4f} by "
                   f"{required - gain:.4f}")
    return GateResult(IMPROVEMENT, row["passed"], message, [row])


def fairness_gate(report: EvaluationReport, policy: PromotionPolicy) -> GateResult:
    rule = policy.segments
    rows, problems = [], []
    by_column: dict[str, list[dict]] = {}
    for segment in report.segments:
        counted = segment["rows"] >= rule.min_rows and (
            rule.min_positives <= segment["positives"] <= segment["rows"] - rule.min_positives
        )
        value = segment.get(rule.metric)
        row = {"segment": f"{segment['segment']}={segment['value']}", "rows": segment["rows"],
               "value": value, "counted": counted, "passed": True}
        if counted:
            by_column.setdefault(segment["segment"], []).append(row)
            if rule.floor is not None and (value is None or value < rule.floor):
                row["passed"] = False
                problems.append(f"{row['segment']} {rule.metric}={_fmt(value)} is below the "
                                f"floor {rule.floor} by {_fmt(rule.floor - (value or 0.0))}")
        rows.append(row)
    if rule.max_disparity is not None:
        for column, counted_rows in by_column.items():
            values = [r["value"] for r in counted_rows if r["value"] is not None]
            if len(values) < 2:
                continue
            gap = max(values) - min(values)
            if gap > rule.max_disparity:
                worst = min(counted_rows, key=lambda r: r["value"])
                best = max(counted_rows, key=lambda r: r["value"])
                problems.append(
                    f"{column}: {rule.metric} gap {gap:.4f} between {best['segment']} and "
                    f"{worst['segment']} exceeds max_disparity {rule.max_disparity} by "
                    f"{gap - rule.max_disparity:.4f}"
                )
    counted_total = sum(len(v) for v in by_column.values())
    if problems:
        return GateResult(FAIRNESS, False, "; ".join(problems), rows)
    return GateResult(FAIRNESS, True,
                      f"{counted_total} counted segment(s) within floor and disparity limits", rows)


def leakage_gate(report: EvaluationReport, policy: PromotionPolicy) -> GateResult:
    """Too good to be true: holdout ROC AUC near 1, or one feature alone separating the
    target (a column that encodes the label). Floors accept such a model; this says so."""
    rule = policy.leakage
    rows, problems = [], []
    auc = report.overall.get("roc_auc")
    if auc is not None:
        flagged = auc >= rule.max_holdout_auc
        rows.append({"what": "holdout roc_auc", "value": auc, "limit": rule.max_holdout_auc,
                     "passed": not flagged})
        if flagged:
            problems.append(f"holdout roc_auc={auc:.4f} is at or above {rule.max_holdout_auc}: "
                            "check for a feature that encodes the target or rows shared with "
                            "training")
    for feature, value in sorted(report.feature_auc.items(),
                                 key=lambda item: -item[1]):
        flagged = value >= rule.max_single_feature_auc
        rows.append({"what": f"feature {feature} alone", "value": value,
                     "limit": rule.max_single_feature_auc, "passed": not flagged})
        if flagged:
            problems.append(f"feature {feature!r} alone separates the target (roc_auc "
                            f"{value:.4f} >= {rule.max_single_feature_auc}): it likely encodes "
                            "the label; drop it from the spec's features if so")
    mode = "blocking" if rule.blocking else "warning only"
    if problems:
        return GateResult(LEAKAGE, False, f"possible leakage ({mode}): " + "; ".join(problems),
                          rows)
    checked = len(report.feature_auc)
    return GateResult(LEAKAGE, True, f"no sign of leakage (holdout roc_auc and {checked} "
                      "single feature(s) checked)", rows)


def _not_evaluated(report: EvaluationReport) -> GateVerdict:
    """A candidate that could not be trained or evaluated fails every gate, saying why."""
    message = f"not evaluated: {report.error}"
    gates = {name: GateResult(name, False, message) for name in ALL_GATES}
    return GateVerdict(report.family, report.version, gates, error=report.error)


def judge(report: EvaluationReport, policy: PromotionPolicy) -> GateVerdict:
    """Every gate of the policy applied to one candidate's evaluation report."""
    if report.error:
        return _not_evaluated(report)
    gates = [
        quality_gate(report, policy),
        improvement_gate(report, policy),
        fairness_gate(report, policy),
        quality_gate(report, policy, blocking=False),
        leakage_gate(report, policy),
    ]
    blocking = (*BLOCKING_GATES, LEAKAGE) if policy.leakage.blocking else BLOCKING_GATES
    return GateVerdict(report.family, report.version, {g.name: g for g in gates}, blocking)


def choice_reason(chosen: EvaluationReport, reports: list[EvaluationReport],
                  verdicts: dict[str, GateVerdict], metric: str) -> str:
    """Why this candidate: it passed every gate and, when others did too, had the best value
    of the policy's improvement metric among them (theirs listed)."""
    passed = [r for r in reports if verdicts[r.family].passed and not r.error]
    reason = f"{chosen.who} passed every gate"
    others = [r for r in passed if r.family != chosen.family]
    if not others:
        return reason + (" (the only candidate that did)" if len(reports) > 1 else "")
    theirs = ", ".join(f"{r.who} {_fmt(r.overall.get(metric))}" for r in others)
    return (f"{reason} and has the best {metric} of the {len(passed)} that did "
            f"({_fmt(chosen.overall.get(metric))}; {theirs})")


def select_challenger(reports: list[EvaluationReport], policy: PromotionPolicy
                      ) -> tuple[EvaluationReport | None, dict[str, GateVerdict]]:
    """The best candidate (by the improvement metric) that passes every blocking gate,
    and the verdict for every candidate by family."""
    verdicts = {r.family: judge(r, policy) for r in reports}
    passing = [r for r in reports if verdicts[r.family].passed and not r.error]
    metric = policy.improvement.metric
    sign = metric_sign(metric)
    best = max(passing, key=lambda r: sign * r.overall[metric], default=None)
    return best, verdicts
