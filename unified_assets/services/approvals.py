"""Human approval rules, as pure functions over the policy and the append-only events."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from unified_assets.policy import ApprovalPolicy, PromotionPolicy, metric_sign, person_problem
from unified_assets.values import ChampionNumbers, EvaluationReport

POLICY_ACTOR = "policy"  # the policy approving by itself, in code (never from config)


class ApprovalRefused(ValueError):
    """A decision that cannot be taken; the message says why."""


def human_reasons(challenger: EvaluationReport, champion_family: str | None,
                  approval: ApprovalPolicy, promotion: PromotionPolicy) -> list[str]:
    """Why the policy wants a person to approve this challenger; empty means automatic."""
    rules = approval.require_human_when
    champion = challenger.champion
    reasons = []
    if rules.always:
        reasons.append("the policy requires a human for every deployment")
    if rules.first_deployment and champion is None:
        reasons.append("first deployment: there is no champion yet")
    if champion is not None:
        metric = promotion.improvement.metric
        sign = metric_sign(metric)
        gain = sign * (challenger.overall[metric] - champion.overall[metric])
        if rules.gain_below is not None and gain < rules.gain_below:
            reasons.append(f"{metric} gain {gain:.4f} over v{champion.version} is below "
                           f"{rules.gain_below}")
        if rules.any_segment_worse:
            worse = _worse_segments(challenger, champion, promotion)
            if worse:
                reasons.append(f"segments worse than the champion: {', '.join(worse)}")
    if rules.family_changes and champion_family and champion_family != challenger.family:
        reasons.append(f"model family changes from {champion_family} to {challenger.family}")
    return reasons


def _worse_segments(challenger: EvaluationReport, champion: ChampionNumbers,
                    promotion: PromotionPolicy) -> list[str]:
    rule = promotion.segments
    sign = metric_sign(rule.metric)
    before = {(s["segment"], s["value"]): s for s in champion.segments}
    worse = []
    for segment in challenger.segments:
        old = before.get((segment["segment"], segment["value"]))
        counted = segment["rows"] >= rule.min_rows and segment["positives"] >= rule.min_positives
        if old is None or not counted or segment[rule.metric] is None or old[rule.metric] is None:
            continue
        if sign * (segment[rule.metric] - old[rule.metric]) < 0:
            worse.append(f"{segment['segment']}={segment['value']} "
                         f"({old[rule.metric]:.4f} -> {segment[rule.metric]:.4f})")
    return worse


@dataclass(frozen=True)
class ApprovalState:
    """`state`: none | pending | approved | rejected | expired."""

    state: str
    request: dict | None = None
    decision: dict | None = None

    def describe(self) -> str:
        if self.decision:
            d = self.decision
            return f"{self.state} by {d['actor']} at {d['created_at']:%Y-%m-%d %H:%M}: {d['reason']}"
        if self.state == "pending":
            return f"awaiting a decision: {self.request['reason']}"
        if self.state == "expired":
            return f"request expired at {self.request['expires_at']:%Y-%m-%d %H:%M}"
        return "no approval requested"


def approval_state(events: list[dict], version: str, now: datetime) -> ApprovalState:
    """The current state of `version` from its events (oldest first)."""
    mine = [e for e in events if e["version"] == version]
    decisions = [e for e in mine if e["kind"] == "decision"]
    requests = [e for e in mine if e["kind"] == "request"]
    if decisions:
        decision = decisions[0]  # decisions are final: the first one stands
        state = "approved" if decision["decision"] == "approve" else "rejected"
        return ApprovalState(state, requests[-1] if requests else None, decision)
    if not requests:
        return ApprovalState("none")
    request = requests[-1]
    if request["expires_at"] is not None and request["expires_at"] <= now:
        return ApprovalState("expired", request)
    return ApprovalState("pending", request)


def awaiting_decision(events: list[dict], now: datetime) -> list[dict]:
    """The versions whose approval request is still open (oldest first), for people to see
    what waits on them: version, why a person must decide, and until when."""
    out = []
    for version in dict.fromkeys(e["version"] for e in events if e["kind"] == "request"):
        state = approval_state(events, version, now)
        if state.state == "pending":
            out.append({"version": version, "because": state.request["reason"],
                        "expires_at": state.request["expires_at"]})
    return out


def check_authorized(person: str, approval: ApprovalPolicy) -> None:
    """Raise ApprovalRefused unless `person` is a person the policy lets approve or reject
    (`group:NAME` stands for its members and is never an identity itself)."""
    problem = person_problem(person)
    if problem:
        raise ApprovalRefused(problem)
    if not approval.may_approve(person):
        people = ", ".join(sorted(approval.expand(approval.approvers)))
        raise ApprovalRefused(f"{person!r} may not approve or reject: the policy allows {people} "
                              f"(approvers: {', '.join(approval.approvers)})")


def check_decision(state: ApprovalState, version: str, person: str, approval: ApprovalPolicy,
                   known_version: bool) -> None:
    """Raise ApprovalRefused unless `person` may decide on `version` now."""
    check_authorized(person, approval)
    if not known_version:
        raise ApprovalRefused(f"version {version} is not a registered version of this model")
    if state.state == "none":
        raise ApprovalRefused(
            f"version {version} has no approval request: only a challenger that passed every "
            "blocking check is put up for approval"
        )
    if state.state in ("approved", "rejected"):
        raise ApprovalRefused(f"version {version} was already {state.describe()}")
    if state.state == "expired":
        raise ApprovalRefused(f"the approval request for version {version} expired; "
                              "re-run the evaluation to request again")
