"""What a request says and what the workflow answers: validation of the HTTP body (a bad one
is a clear 4xx before any part runs, so nothing is escalated by mistake) and the decision:
answer, retry (a part the policy lets us wait for did not come back in time), or escalate to
a person (unclear intent, high fraud risk, a service that stays down, or a rule). Pure: no
I/O, so the rules are tested without a cluster."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from unified_assets.serving.profiles import ServingRules

ANSWER, RETRY, ESCALATE = "answer", "retry", "escalate"
FIELDS = ("customer_id", "message")


class BadRequest(ValueError):
    """A request the workflow refuses before running any part: `status` is the HTTP code."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def customer_id_of(value: object) -> int | None:
    """A customer id as a request may give it (a positive integer, or its digits as text)."""
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value.strip())
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        return None
    return value


def parse_request(body: bytes, rules: ServingRules) -> tuple[int, str]:
    """(customer_id, message) from a `POST /support` body, or BadRequest saying what is wrong."""
    if len(body) > rules.max_body_bytes:
        raise BadRequest(413, f"the request body is {len(body)} bytes; at most "
                         f"{rules.max_body_bytes} are accepted")
    try:
        payload = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise BadRequest(400, f"the body is not valid JSON ({error})") from None
    if not isinstance(payload, dict):
        raise BadRequest(422, 'expected a JSON object {"customer_id": ..., "message": "..."}')
    unknown = sorted(set(payload) - set(FIELDS))
    if unknown:
        raise BadRequest(422, f"unknown field(s) {', '.join(unknown)}; expected {', '.join(FIELDS)}")
    missing = [name for name in FIELDS if name not in payload]
    if missing:
        raise BadRequest(422, f"missing field(s) {', '.join(missing)}")
    customer, message = customer_id_of(payload["customer_id"]), payload["message"]
    if customer is None:
        raise BadRequest(422, f"customer_id must be a positive integer, not "
                         f"{payload['customer_id']!r}"[:200])
    if not isinstance(message, str):
        raise BadRequest(422, f"message must be text, not {type(message).__name__}")
    message = message.strip()
    if not message:
        raise BadRequest(422, "message is empty")
    if len(message) > rules.max_message_chars:
        raise BadRequest(413, f"message is {len(message)} characters; at most "
                         f"{rules.max_message_chars} are accepted")
    return customer, message


@dataclass(frozen=True)
class FraudCheck:
    """The fraud service's answer: a score per transaction id, or why it never came."""

    scores: dict[str, float] = field(default_factory=dict)
    version: str | None = None
    attempts: int = 0
    errors: tuple[str, ...] = ()
    open_for_s: float | None = None  # not called: the breaker is open this long yet

    @property
    def ok(self) -> bool:
        return self.version is not None


@dataclass(frozen=True)
class Outcome:
    decision: str
    reason: str
    answer: str


def explain_target(intents: list[str], customer: dict) -> dict | None:
    """The payment a request asks about: the newest declined one for a decline question, the
    newest one for a fraud report; None when the intent needs no explanation."""
    payments = customer["transactions"]
    if "decline_reason" in intents:
        return next((p for p in payments if p["status"] == "declined"), None)
    if "fraud_report" in intents and payments:
        return payments[0]
    return None


def _refund_text(customer: dict) -> str:
    refunds = customer["refunds"]
    if not refunds:
        return "We found no refund request on your recent payments."
    texts = []
    for refund in refunds:
        state = {"requested": "has been requested and is waiting to be processed",
                 "processing": "is being processed",
                 "sent": "has been sent to your card"}.get(refund["status"], refund["status"])
        texts.append(f"Your refund of ${refund['amount']:,.2f} ({refund['merchant_category']}, "
                     f"requested {refund['requested_on']}) {state}; expected by "
                     f"{refund['expected_by']}.")
    return " ".join(texts)


def compose_answer(intents: list[str], customer: dict, explanation: str | None) -> str:
    """The answer for the intents asked, from the retrieved data and the explanation."""
    parts = []
    if "refund_status" in intents:
        parts.append(_refund_text(customer))
    if "decline_reason" in intents:
        parts.append(explanation or ("None of your recent payments was declined."
                                     if explain_target(["decline_reason"], customer) is None
                                     else "We could not work out why your payment was declined."))
    if "fraud_report" in intents:
        parts.append("A fraud specialist will review your recent payments and contact you; "
                     "block your card in the app if it is lost.")
    if not parts:
        parts.append("A member of our team will get back to you.")
    return " ".join(parts)


def decide(classified: dict, customer: dict, fraud: FraudCheck, explanation: str | None,
           explain_problem: tuple[str, str] | None, rules: ServingRules) -> Outcome:
    """Answer, retry or escalate, with the first rule that applies.

    `explain_problem` is (decision, why) when the explainer could not be used and the
    policy said to wait (retry) or to escalate; a degraded (CPU) explanation is no problem."""
    intents = list(classified["intents"])
    answer = compose_answer(intents, customer, explanation)
    confidence = classified["confidence"]
    if confidence < rules.min_intent_confidence:
        return Outcome(ESCALATE, f"intent unclear: {classified['intent']} at {confidence:.2f} < "
                       f"min_intent_confidence {rules.min_intent_confidence}", answer)
    if not fraud.ok and fraud.open_for_s is not None:
        # Kept from a service known to be down: come back, unless a person handles it anyway.
        why = f"fraud service {fraud.errors[-1] if fraud.errors else 'circuit open'}"
        ruled = [i for i in intents if i in rules.escalate_intents]
        if ruled:
            return Outcome(ESCALATE, f"{why}; intent {ruled[0]} is handled by a person "
                           "(escalate_intents)", answer)
        return Outcome(RETRY, why, answer)
    if not fraud.ok:
        last = fraud.errors[-1] if fraud.errors else "no answer"
        why = f"fraud service unavailable after {fraud.attempts} attempt(s): {last}"
        decision = ESCALATE if rules.on_fraud_unavailable == "escalate" else RETRY
        return Outcome(decision, f"{why} (on_fraud_unavailable: {rules.on_fraud_unavailable})",
                       answer)
    if explain_problem is not None:
        return Outcome(explain_problem[0], explain_problem[1], answer)
    ruled = [i for i in intents if i in rules.escalate_intents]
    if ruled:
        return Outcome(ESCALATE, f"policy: intent {ruled[0]} is handled by a person "
                       "(escalate_intents)", answer)
    risky = sorted(((score, tid) for tid, score in fraud.scores.items()
                    if score >= rules.escalate_risk and _approved(customer, tid)), reverse=True)
    if risky:
        score, tid = risky[0]
        return Outcome(ESCALATE, f"high fraud risk: approved payment {tid} scored {score:.2f} >= "
                       f"escalate_risk {rules.escalate_risk}", answer)
    return Outcome(ANSWER, "answered from the retrieved data", answer)


def _approved(customer: dict, transaction_id: str) -> bool:
    return any(p["transaction_id"] == transaction_id and p["status"] == "approved"
               for p in customer["transactions"])
