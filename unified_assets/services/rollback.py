"""Rollback as a service: authorize the request, move `champion` back in one ledger call and
write an incident with both evaluation reports and the live evidence. The
`production_model` asset (launched from the UI, by the live sensor or by the CLI through the
instance) calls it; nothing here knows about assets or where evidence is stored."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from resources.decision_store import DecisionStore
from unified_assets.policy import Policy
from unified_assets.services.approvals import ApprovalRefused
from unified_assets.services.champion import ChampionError, ChampionLedger, LedgerFault
from unified_assets.services.decisions import (
    ROLLBACK,
    ROLLBACK_FIELDS,
    authorize_rollback,
    fill_from_token,
    record_refusal,
)
from unified_assets.services.refusals import Refused


@dataclass(frozen=True)
class RollbackRequest:
    """What a person (or the live sensor) asks for; a signed token may stand for the fields."""

    by: str = ""
    reason: str = ""
    rollback_to: str = ""
    expected_from: str = ""
    token: str = ""
    source: str = "ui"

    def given(self) -> dict[str, str]:
        """The fields as typed, or as the token states them (they must then agree)."""
        typed = {"rollback_to": self.rollback_to, "by": self.by, "reason": self.reason}
        return fill_from_token(self.token, typed, ROLLBACK_FIELDS) if self.token else typed


@dataclass(frozen=True)
class Evidence:
    """Where the incident's evidence comes from, given a version: the URI of its evaluation
    report and its latest live record (None when there is none). Supplied by the caller."""

    report_uri: Callable[[str], str | None]
    live_record: Callable[[str], dict | None]


def request_rollback(decisions: DecisionStore, ledger: ChampionLedger, policy: Policy,
                     model_name: str, request: RollbackRequest, evidence: Evidence) -> dict:
    """Authorize, then roll back. A refused request (who, signature, ledger rules) is recorded
    and raised as `Refused` with its one line; a ledger fault propagates as `LedgerFault`."""
    given = request.given()
    try:
        identity = authorize_rollback(
            decisions, policy, model=model_name, by=given["by"], reason=given["reason"],
            to_version=given["rollback_to"] or None,
            expected_from=request.expected_from or None, token=request.token or None,
            source=request.source)
    except ApprovalRefused as why:
        raise Refused(f"rollback refused and recorded: {why}") from None
    try:
        result = rollback_production(
            ledger, model_name, given["by"], given["reason"], evidence,
            to_version=given["rollback_to"] or None,
            expected_from=request.expected_from or None,
            allow_any_approved=policy.rollback.to_any_approved_version,
            details={k: v for k, v in identity.items() if k != "token"})
    except LedgerFault:
        raise  # a fault, not a refusal: the failure sensor files an incident
    except ChampionError as error:
        # The request was authorized (recorded above); what the ledger refused is recorded
        # beside it, so the log never shows an authorized rollback as if it happened.
        record_refusal(decisions, model_name=model_name, version=given["rollback_to"] or "",
                       decision=ROLLBACK, actor=given["by"],
                       reason=f"refused by the ledger: {error}",
                       details={"source": request.source})
        raise Refused(str(error)) from None
    return {"model_name": model_name, **result}


def rollback_production(ledger: ChampionLedger, model_name: str, by: str, reason: str,
                        evidence: Evidence, to_version: str | None = None,
                        expected_from: str | None = None, allow_any_approved: bool = False,
                        details: dict | None = None) -> dict:
    """Move `champion` back in one registry call and record an incident with both reports.
    Who may ask is checked before (`request_rollback`, `decisions.authorize_rollback`)."""
    if not by.strip() or not reason.strip():
        raise ChampionError("a rollback needs --by and --reason")
    outcome = ledger.rollback(model_name, actor=by, reason=reason, to_version=to_version,
                              expected_from=expected_from, allow_any_approved=allow_any_approved,
                              details=details)
    if outcome.action == "none":
        return {"action": "none", "message": outcome.message, "champion": outcome.to_version}
    reports = {side: evidence.report_uri(version) if version else None
               for side, version in (("from", outcome.from_version), ("to", outcome.to_version))}
    incident = ledger.store.record_incident(
        kind="rollback", model_name=model_name, actor=by, reason=reason,
        details={"from_version": outcome.from_version, "to_version": outcome.to_version,
                 "evaluation_reports": reports, "authorization": details or {},
                 "live_metrics": evidence.live_record(outcome.from_version)},
    )
    return {"action": "rollback", "message": outcome.message, "champion": outcome.to_version,
            "from_version": outcome.from_version, "incident_id": incident,
            "evaluation_reports": reports}
