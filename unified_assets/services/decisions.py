"""Decisions as a domain service: who may approve, reject or roll back, whether it really is
them, and the append-only record of each decision and each refusal.

Used alike by the CLI, the UI (the `approval` and `production_model` assets, launched with
config) and the live-performance sensor, so every path applies the same rules:

- a person's decision is accepted only from someone the policy lists, and, when the policy
  requires signatures (the default), only with a token signed by that person's key; a
  token is used once;
- the live-performance sensor acts in its own name (`policy:live-performance`). A name
  typed into the launchpad must not be able to borrow it, and the sensor holds no key a
  person could not also be handed. So the sensor MINTS a one-time token: it records the
  token's SHA-256 in the decision store together with exactly what it asks for (model,
  rollback target, champion it has evidence about, reason) and puts the token in the run
  config. A rollback in the sensor's name is accepted only with a token whose hash the
  store holds for that same request, unused and younger than the token TTL. Nobody can
  write to the store from the launchpad, the store keeps only the hash, and a token copied
  from a launched run's config has already been used (or can only ask for the very same
  rollback). This needs no key distribution to the daemon and the run workers.
- every refusal is recorded (an approval event of kind `refusal`; rollbacks also as an
  incident) and raised as ApprovalRefused.
"""

from __future__ import annotations

import hashlib
import secrets
from datetime import UTC, datetime

from resources.decision_store import DecisionStore
from unified_assets.policy import Policy, person_problem
from unified_assets.services.approvals import (
    POLICY_ACTOR,
    ApprovalRefused,
    approval_state,
    check_authorized,
    check_decision,
)
from unified_assets.services.identity import (
    SIGNING_KEY_ENV,
    TOKEN_TTL,
    TOKEN_VERSION,
    IdentityError,
    read_token,
    token_id,
    verify,
)

LIVE_ACTOR = "policy:live-performance"  # the live-performance sensor's automated rollbacks
AUTOMATION_ACTORS = (LIVE_ACTOR,)
AUTOMATION_PREFIX = "auto1."
REFUSAL = "refusal"
ROLLBACK = "rollback"  # event kind: a rollback was authorized (the ledger records the change)
MINT = "mint"  # event kind: the sensor minted a one-time token for one request
# the fields of a decision form and the field of the signed token each one must equal
APPROVAL_FIELDS = {"decision": "action", "version": "version", "approver": "actor",
                   "reason": "reason"}
ROLLBACK_FIELDS = {"rollback_to": "version", "by": "actor", "reason": "reason"}


def fill_from_token(token: str, typed: dict[str, str], fields: dict[str, str]) -> dict[str, str]:
    """The form's values, blanks taken from what the token claims, so a launchpad user only
    pastes the token. Nothing is trusted here: the signature and every field are checked
    when the decision is recorded, and a typed value the token does not match is refused."""
    try:
        claimed = read_token(token)
    except IdentityError:
        return typed  # refused, and recorded, by the check that follows
    return {name: value if value.strip() and value != "none" else getattr(claimed, fields[name])
            for name, value in typed.items()}


def authenticate(store: DecisionStore, policy: Policy, *, model: str, action: str, version: str,
                 actor: str, reason: str, token: str | None, now: datetime) -> dict:
    """What to record about who decided: the verified token, or that it is unsigned (only
    when the policy allows it). Raises ApprovalRefused."""
    if token:
        try:
            signed = verify(token, policy.approval.keys, now)
        except IdentityError as error:
            raise ApprovalRefused(f"signature refused: {error}") from None
        expected = {"action": action, "model": model, "version": version, "actor": actor,
                    "reason": reason}
        for field, value in expected.items():
            if getattr(signed, field) != value:
                raise ApprovalRefused(
                    f"the token was signed for {field} {getattr(signed, field)!r}, not {value!r}: "
                    "a token decides only what it was signed for; sign this decision")
        used = _token_use(store, model, token_id(token))
        if used is not None:
            raise ApprovalRefused(f"this signed token was already used (decision log event "
                                  f"#{used['id']}, {used['kind']}); a token decides once")
        return {"signed": True, "token": token, "token_id": token_id(token),
                "key": policy.approval.keys[actor]}
    if policy.approval.require_signature:
        raise ApprovalRefused(
            f"the decision by {actor!r} is not signed and the policy requires signatures "
            f"(approval.require_signature): set {SIGNING_KEY_ENV} to your key file for the CLI, "
            f"or paste the token `unified-ai sign {action} ...` prints into the launchpad")
    return {"signed": False}


def record_refusal(store: DecisionStore, *, model_name: str, version: str, decision: str,
                   actor: str, reason: str, details: dict) -> None:
    """A refused decision or rollback: in the decision log beside the decisions, and an
    incident (`unified-ai incidents --kind refusal`), where people look for attempts to
    change what is served without the authority or the evidence to."""
    store.append_event(model_name=model_name, version=version, kind=REFUSAL, decision=decision,
                       actor=actor, reason=reason, details=details)
    store.record_incident(kind=REFUSAL, model_name=model_name, actor=actor,
                          reason=f"{decision} refused: {reason}", details=details)


def record_decision(store: DecisionStore, registry, policy: Policy, model_name: str, version: str,
                    decision: str, person: str, reason: str, source: str,
                    token: str | None = None) -> dict:
    """Validate and append a person's approve/reject decision; a refused one is recorded
    too, then raised as ApprovalRefused. `registry` needs only `version_exists`."""
    now = datetime.now(UTC)
    state = approval_state(store.events(model_name, version), version, now)
    try:
        if decision not in ("approve", "reject"):
            raise ApprovalRefused(f"decision {decision!r} is not approve or reject")
        if not reason.strip():
            raise ApprovalRefused("a reason is required")
        check_authorized(person, policy.approval)
        identity = authenticate(store, policy, model=model_name, action=decision, version=version,
                                actor=person, reason=reason, token=token, now=now)
        check_decision(state, version, person, policy.approval,
                       known_version=registry.version_exists(model_name, version))
    except ApprovalRefused as refused:
        record_refusal(store, model_name=model_name, version=version, decision=decision,
                       actor=person, reason=str(refused),
                       details={"source": source, "given_reason": reason, "token": _shown(token)})
        raise
    event_id = store.append_event(model_name=model_name, version=version, kind="decision",
                                  decision=decision, actor=person, reason=reason,
                                  details={"source": source, **identity})
    return {"event_id": event_id, "version": version, "decision": decision, "actor": person,
            "signed": identity["signed"]}


def decision_problem(decision: dict, model_name: str, policy: Policy) -> str | None:
    """Why a recorded approve/reject must not be acted on under the policy now (None: it
    may). Checked when the decision is acted on, not only when it was taken: an approver
    removed from the policy, a key rotated away, or signatures required since, all stop it."""
    actor = decision["actor"]
    if actor == POLICY_ACTOR:
        return None  # the policy approving by itself, computed in code
    if not policy.approval.may_approve(actor):
        return f"{actor!r} is not an approver under the current policy"
    details = decision.get("details") or {}
    token = details.get("token")
    if token:
        try:
            signed = verify(token, policy.approval.keys, decision["created_at"])
        except IdentityError as error:
            return f"its signature does not verify against the current policy: {error}"
        recorded = {"action": decision["decision"], "model": model_name,
                    "version": decision["version"], "actor": actor, "reason": decision["reason"]}
        if any(getattr(signed, field) != value for field, value in recorded.items()):
            return "the recorded decision differs from what was signed"
        return None
    if policy.approval.require_signature:
        return "it is unsigned and the policy requires signed decisions"
    return None


def mint_automation_token(store: DecisionStore, *, model: str, actor: str, reason: str,
                          to_version: str | None, expected_from: str | None) -> str:
    """A one-time token for one automated rollback request (see the module docstring)."""
    if actor not in AUTOMATION_ACTORS:
        raise ValueError(f"{actor!r} is not an automated actor")
    token = AUTOMATION_PREFIX + secrets.token_urlsafe(32)
    store.append_event(model_name=model, version=to_version or "", kind=MINT, decision=ROLLBACK,
                       actor=actor, reason=reason,
                       details={"token_sha256": _sha256(token), "expected_from": expected_from})
    return token


def authorize_rollback(store: DecisionStore, policy: Policy, *, model: str, by: str, reason: str,
                       to_version: str | None, expected_from: str | None, token: str | None,
                       source: str) -> dict:
    """Record who asked for a rollback and how they were verified; a refused request is
    recorded (refusal event and incident) and raised as ApprovalRefused."""
    now = datetime.now(UTC)
    try:
        if not by.strip() or not reason.strip():
            raise ApprovalRefused("a rollback needs who asks for it (by) and a reason")
        if by in AUTOMATION_ACTORS or (token or "").startswith(AUTOMATION_PREFIX):
            identity = _automation_identity(store, model=model, by=by, reason=reason,
                                            to_version=to_version, expected_from=expected_from,
                                            token=token or "", now=now)
        else:
            problem = person_problem(by)
            if problem:
                raise ApprovalRefused(problem)
            if not policy.may_roll_back(by):
                people = ", ".join(sorted(policy.approval.expand(policy.rollback.by)))
                raise ApprovalRefused(f"{by!r} may not roll back: the policy allows {people} "
                                      f"(rollback.by: {', '.join(policy.rollback.by)})")
            identity = authenticate(store, policy, model=model, action=ROLLBACK,
                                    version=to_version or "", actor=by, reason=reason,
                                    token=token or None, now=now)
    except ApprovalRefused as refused:
        details = {"source": source, "given_reason": reason, "rollback_to": to_version,
                   "expected_from": expected_from, "token": _shown(token)}
        record_refusal(store, model_name=model, version=to_version or "", decision=ROLLBACK,
                       actor=by, reason=str(refused), details=details)
        raise
    store.append_event(model_name=model, version=to_version or "", kind=ROLLBACK,
                       decision=ROLLBACK, actor=by, reason=reason,
                       details={"source": source, "expected_from": expected_from, **identity})
    return identity


def _automation_identity(store: DecisionStore, *, model: str, by: str, reason: str,
                         to_version: str | None, expected_from: str | None, token: str,
                         now: datetime) -> dict:
    if by not in AUTOMATION_ACTORS:
        raise ApprovalRefused(f"an automation token acts only in the name of the sensor that "
                              f"minted it, not {by!r}")
    if not token.startswith(AUTOMATION_PREFIX):
        raise ApprovalRefused(
            f"{by!r} is the live-performance sensor: a rollback in its name is accepted only "
            "from a request the sensor made itself (it carries a one-time token); a person "
            "rolls back in their own name")
    digest = _sha256(token)
    mint = next((e for e in store.events(model) if e["kind"] == MINT
                 and (e["details"] or {}).get("token_sha256") == digest), None)
    if mint is None:
        raise ApprovalRefused(f"the token in the request was not minted by {by} for {model}")
    asked = {"by": (mint["actor"], by), "reason": (mint["reason"], reason),
             "rollback_to": (mint["version"], to_version or ""),
             "expected_from": (mint["details"].get("expected_from"), expected_from or None)}
    for field, (minted, given) in asked.items():
        if minted != given:
            raise ApprovalRefused(f"the request's {field} {given!r} is not what {by} asked for "
                                  f"({minted!r}); the token is bound to its request")
    if now - mint["created_at"] > TOKEN_TTL:
        raise ApprovalRefused(f"the token {by} minted at {mint['created_at']:%Y-%m-%d %H:%M} "
                              "has expired")
    used = _token_use(store, model, digest)
    if used is not None:
        raise ApprovalRefused(f"this token was already used (decision log event #{used['id']}); "
                              "a token acts once")
    return {"signed": False, "automation": True, "token_id": digest, "minted_in": mint["id"]}


def _token_use(store: DecisionStore, model: str, tid: str) -> dict | None:
    return next((e for e in store.events(model) if e["kind"] in ("decision", ROLLBACK)
                 and (e["details"] or {}).get("token_id") == tid), None)


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _shown(token: str | None) -> str | None:
    """A signed token is a public statement and kept whole; an automation token is a bearer
    secret and only its hash is kept."""
    if not token:
        return None
    if token.startswith(TOKEN_VERSION + "."):
        return token
    return "sha256:" + _sha256(token)
