"""Escalated support requests as cases in the decision store: a person sees them
(`unified-ai cases`) and closes them with an answer (`unified-ai cases resolve`).

Cases are events of their own kind (`case`) under one model name of the decision log, appended
and read through the store's public methods only: the log's schema is untouched and every
case is hash-chained like a decision. Closing a case follows the identity rules of approvals:
the person must be an approver under the policy, and when the policy requires signatures the
resolution carries a token signed by them (an `approve` of the case, with the answer as its
reason: `unified-ai sign approve CASE --model unified-ai/support-cases ...`)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from resources.decision_store import DecisionStore
from unified_assets.policy import Policy

CASES_MODEL = "unified-ai/support-cases"  # the decision log's model name for support cases
CASE = "case"  # event kind
OPEN, RESOLVE = "open", "resolve"
WORKFLOW_ACTOR = "policy:support-workflow"  # the code's own name; never a person's
RESOLVE_ACTION = "approve"  # what a signed resolution token says (identity.ACTIONS)


@dataclass(frozen=True)
class Case:
    case_id: str
    status: str  # open | resolved
    opened_at: datetime
    reason: str
    details: dict
    resolved_by: str | None = None
    answer: str | None = None
    resolved_at: datetime | None = None

    @property
    def customer_id(self) -> int | None:
        return self.details.get("customer_id")


def case_id_for(request_id: str) -> str:
    return f"case-{request_id}"


def open_case(store: DecisionStore, *, request_id: str, reason: str, details: dict) -> str:
    """Record an escalated request as an open case; its id."""
    case_id = case_id_for(request_id)
    store.append_event(model_name=CASES_MODEL, version=case_id, kind=CASE, decision=OPEN,
                       actor=WORKFLOW_ACTOR, reason=reason,
                       details={"request_id": request_id, **details})
    return case_id


def open_request_case(store: DecisionStore, *, request_id: str, customer_id: int, message: str,
                      intents: list[str], reason: str, draft_answer: str, model_versions: dict,
                      extra: dict | None = None) -> str:
    """An escalated support request as an open case (online and backlog alike): who asked
    what, the intents read, the draft answer and the model versions; `extra` adds details
    (a backlog's file and line)."""
    return open_case(store, request_id=request_id, reason=reason,
                     details={"customer_id": customer_id, "message": message,
                              "intents": intents, "draft_answer": draft_answer,
                              "model_versions": model_versions, **(extra or {})})


def list_cases(store: DecisionStore, status: str | None = None) -> list[Case]:
    """Every case, oldest first, or only those with `status` (open | resolved)."""
    opened: dict[str, dict] = {}
    resolved: dict[str, dict] = {}
    for event in store.events(CASES_MODEL):
        if event["kind"] != CASE:
            continue
        if event["decision"] == OPEN:
            opened.setdefault(event["version"], event)
        elif event["decision"] == RESOLVE:
            resolved.setdefault(event["version"], event)
    cases = []
    for case_id, event in opened.items():
        done = resolved.get(case_id)
        cases.append(Case(case_id, "resolved" if done else "open", event["created_at"],
                          event["reason"] or "", event["details"] or {},
                          resolved_by=done["actor"] if done else None,
                          answer=done["reason"] if done else None,
                          resolved_at=done["created_at"] if done else None))
    return [c for c in cases if status is None or c.status == status]


class CaseRefused(ValueError):
    """A resolution that must not be recorded; the refusal itself is recorded."""


def resolve_case(store: DecisionStore, policy: Policy, case_id: str, by: str, answer: str,
                 token: str | None = None, source: str = "cli") -> Case:
    """Close an open case with `answer` in the name of `by`; refused (and recorded) unless
    `by` may approve under the policy, signed when the policy requires it, and the case is
    open."""
    from unified_assets.services.approvals import ApprovalRefused, check_authorized
    from unified_assets.services.decisions import authenticate

    now = datetime.now(UTC)
    try:
        if not answer.strip():
            raise ApprovalRefused("an answer is required")
        check_authorized(by, policy.approval)
        case = next((c for c in list_cases(store) if c.case_id == case_id), None)
        if case is None:
            raise ApprovalRefused(f"no case {case_id}")
        if case.status != "open":
            raise ApprovalRefused(f"case {case_id} was already resolved by {case.resolved_by}")
        identity = authenticate(store, policy, model=CASES_MODEL, action=RESOLVE_ACTION,
                                version=case_id, actor=by, reason=answer, token=token, now=now)
    except ApprovalRefused as refused:
        store.append_event(model_name=CASES_MODEL, version=case_id, kind="refusal",
                           decision=RESOLVE, actor=by, reason=str(refused),
                           details={"source": source, "given_answer": answer})
        raise CaseRefused(str(refused)) from None
    store.append_event(model_name=CASES_MODEL, version=case_id, kind=CASE, decision=RESOLVE,
                       actor=by, reason=answer, details={"source": source, **identity})
    return next(c for c in list_cases(store) if c.case_id == case_id)
