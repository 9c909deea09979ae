"""Approval and promotion as a service: record a decision taken in a form, settle what the
policy says about a challenger (approve by itself, or ask a person), and promote the approved
one through the ledger. The `approval` and `production_model` assets call it."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from resources.decision_store import DecisionStore
from resources.mlflow_registry import MlflowRegistry
from unified_assets.policy import Policy
from unified_assets.services.approvals import (
    POLICY_ACTOR,
    ApprovalRefused,
    approval_state,
    awaiting_decision,
    human_reasons,
)
from unified_assets.services.champion import ChampionLedger
from unified_assets.services.decisions import (
    APPROVAL_FIELDS,
    decision_problem,
    fill_from_token,
    record_decision,
)
from unified_assets.services.refusals import Refused
from unified_assets.values import ApprovalRecord, ChallengerChoice


@dataclass(frozen=True)
class DecisionForm:
    """A decision as typed in the launchpad (or stated by a pasted token)."""

    decision: str = "none"
    version: str = ""
    approver: str = ""
    reason: str = ""
    token: str = ""

    @property
    def empty(self) -> bool:
        return self.decision == "none" and not self.token


@dataclass(frozen=True)
class ApprovalOutcome:
    """Where a challenger stands after the policy had its say; `record` is the asset value."""

    state: str  # approved | pending | rejected | expired | none | unverified
    described: str
    requested_because: str
    record: ApprovalRecord
    waiting: list[dict] = field(default_factory=list)

    @property
    def approved(self) -> bool:
        return self.state == "approved"


def take_decision(decisions: DecisionStore, registry: MlflowRegistry, policy: Policy,
                  model_name: str, version: str, form: DecisionForm, source: str) -> None:
    """Record the form's decision on the current challenger; a refusal is recorded and raised
    as `Refused` with its one line."""
    typed = {"decision": form.decision, "version": form.version, "approver": form.approver,
             "reason": form.reason}
    given = fill_from_token(form.token, typed, APPROVAL_FIELDS) if form.token else typed
    if given["version"] != version:
        raise Refused(f"config names v{given['version'] or '?'} but the challenger is "
                      f"v{version}; decide on the current challenger")
    try:
        record_decision(decisions, registry, policy, model_name, version, given["decision"],
                        given["approver"], given["reason"], source=source,
                        token=form.token or None)
    except ApprovalRefused as why:
        raise Refused(f"decision refused and recorded: {why}") from None


def settle_approval(decisions: DecisionStore, registry: MlflowRegistry, policy: Policy,
                    challenger: ChallengerChoice, now: datetime | None = None) -> ApprovalOutcome:
    """The challenger's approval state. Without a live decision the policy either approves it
    (and records that it did) or files a request for a person. An approval is checked again
    here, since the policy may have dropped the approver, rotated the key or started
    requiring signatures since it was taken."""
    now = now or datetime.now(UTC)
    model_name, version = challenger.model_name, challenger.version
    state = approval_state(decisions.events(model_name, version), version, now)
    if state.state in ("none", "expired"):
        champion = challenger.chosen.champion
        family = (registry.version_tags(model_name, champion.version).get("family")
                  if champion else None)
        reasons = human_reasons(challenger.chosen, family, policy.approval, policy.promotion)
        if reasons:
            ttl = timedelta(hours=policy.approval.request_ttl_hours)
            decisions.append_event(model_name=model_name, version=version, kind="request",
                                   actor=POLICY_ACTOR, reason="; ".join(reasons),
                                   expires_at=now + ttl,
                                   details={"report_uri": challenger.report_uri})
        else:
            decisions.append_event(model_name=model_name, version=version, kind="decision",
                                   decision="approve", actor=POLICY_ACTOR,
                                   reason="approved automatically: no policy rule needs a human",
                                   details={"source": "policy"})
        state = approval_state(decisions.events(model_name, version), version, now)
    problem = decision_problem(state.decision, model_name, policy) \
        if state.state == "approved" else None
    state_name = "unverified" if problem else state.state
    described = f"{state.describe()}; not acted on: {problem}" if problem else state.describe()
    record = ApprovalRecord(
        challenger, approval_state=state_name, approval=described,
        approved_by=state.decision["actor"] if state.decision and not problem else None)
    return ApprovalOutcome(
        state=state_name, described=described,
        requested_because=state.request["reason"] if state.request else "-",
        record=record, waiting=awaiting_decision(decisions.events(model_name), now))


def promote_approved(ledger: ChampionLedger, approval: ApprovalRecord, run_id: str) -> dict:
    """Move `champion` to the approved challenger through the ledger; the record says what
    happened (a `ChampionError` says why it must not)."""
    challenger = approval.challenger
    compared_with = challenger.chosen.champion
    outcome = ledger.promote(
        approval.model_name, approval.version,
        actor=approval.approved_by or POLICY_ACTOR,
        reason=f"passed every gate; {approval.approval}",
        details={"evaluation_report": challenger.report_uri,
                 "training_batches": challenger.training_batches, "dagster_run_id": run_id},
        evaluated_against=compared_with.version if compared_with else None,
    )
    return {"model_name": approval.model_name, "action": outcome.action,
            "message": outcome.message, "champion": outcome.to_version,
            "from_version": outcome.from_version, "evaluation_report": challenger.report_uri,
            "training_batches": challenger.training_batches}
