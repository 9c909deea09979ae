"""The support workflow over a backlog of requests: the same five parts as the online path,
run by Dagster assets over one file of requests at a time (`unified_assets/assets/backlog.py`).

A backlog is a JSONL file a person drops in `<home>/serving/backlog/`: one request a line,
the body `POST /support` takes (`{"customer_id": 42, "message": "..."}`), optionally with
its own `"request_id"`. Each line is validated by `decide.parse_request`, as a request body
is online: a bad line is refused with its file, line number and HTTP status and the others
go on. The parts call the functions the Serve replicas call (the intent model's
`read_intents`, the customer store's `lookup`, `explain.explain_payments`,
`explain.payment_scores`, `decide.explain_target` and `decide.decide`), so a request gets
the decision it would get online from the same models and rules.

Plain functions over dicts (the assets' values); pandas and torch are imported inside."""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from unified_assets.serving.decide import (
    ESCALATE,
    RETRY,
    BadRequest,
    FraudCheck,
    customer_id_of,
    decide,
    explain_target,
)
from unified_assets.serving.profiles import ServingRules

SUFFIX = ".jsonl"
REJECTED = "rejected"
REQUEST_ID = "request_id"
_REQUEST_ID_RE = re.compile(r"[A-Za-z0-9_.:-]{1,64}")
CHUNK = 1000  # messages classified, payments scored or explained per call


@dataclass(frozen=True)
class BacklogFile:
    key: str  # its partition key
    name: str
    path: Path
    version: str  # changes when the file is replaced or edited


def backlog_files(folder: Path) -> dict[str, BacklogFile]:
    """The complete backlog files in `folder` (`NAME.jsonl`; hidden and `.partial` files are
    still being written), by partition key (`resources.dataset.batch_key`: the stem when it
    is plain, else the readable stem and a hash of the exact name)."""
    from resources.dataset import batch_key, is_complete

    out = {}
    if not folder.is_dir():
        return out
    for path in sorted(folder.iterdir()):
        if path.is_file() and path.name.endswith(SUFFIX) and is_complete(path.name):
            stat = path.stat()
            key = batch_key(path.name, SUFFIX)
            out[key] = BacklogFile(key, path.name, path, f"{stat.st_size}-{stat.st_mtime_ns}")
    return out


def _own_id(body: bytes) -> tuple[str | None, bytes]:
    """A line's own `request_id`, taken out of the body `parse_request` then judges."""
    try:
        payload = json.loads(body)
    except ValueError:
        return None, body  # parse_request names the JSON error
    if not isinstance(payload, dict) or REQUEST_ID not in payload:
        return None, body
    request_id = payload.pop(REQUEST_ID)
    if not isinstance(request_id, str) or not _REQUEST_ID_RE.fullmatch(request_id):
        raise BadRequest(422, f"request_id must be 1-64 letters, digits or _.:- , not "
                         f"{request_id!r}"[:200])
    return request_id, json.dumps(payload).encode()


def _whose(body: bytes) -> int | None:
    """A refused line's customer, when it can be read (kept in the answers file)."""
    try:
        return customer_id_of(json.loads(body).get("customer_id"))
    except (ValueError, AttributeError):
        return None


def read_backlog(path: Path, key: str, rules: ServingRules) -> tuple[list[dict], list[dict]]:
    """(requests, refused) of a backlog file. A request: request_id (its own, or
    `KEY-L<line>-<hash of the line>`), line, customer_id, message. A refused line: file,
    line, HTTP status and why (as `POST /support` would answer it). Blank lines are skipped."""
    from unified_assets.serving.decide import parse_request

    requests: list[dict] = []
    refused: list[dict] = []
    first_line: dict[str, int] = {}
    with Path(path).open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            body = raw.strip()
            if not body:
                continue
            try:
                request_id, clean = _own_id(body)
                customer_id, message = parse_request(clean, rules)
                if request_id is None:
                    digest = hashlib.sha256(body).hexdigest()[:8]
                    request_id = f"{key}-L{number}-{digest}"
                if request_id in first_line:
                    raise BadRequest(422, f"request_id {request_id} is already on line "
                                     f"{first_line[request_id]}")
            except BadRequest as bad:
                refused.append({"file": str(path), "line": number, "status": bad.status,
                                "error": str(bad), "customer_id": _whose(body)})
                continue
            first_line[request_id] = number
            requests.append({"request_id": request_id, "line": number,
                             "customer_id": customer_id, "message": message})
    return requests, refused


def classify(model: Any, requests: list[dict]) -> dict[str, dict]:
    """Each request's intents, as `IntentModel.classify` reads them (its per-intent scores
    and `read_intents`), a chunk of messages per call."""
    from unified_assets.serving.intent_model import read_intents

    out: dict[str, dict] = {}
    for start in range(0, len(requests), CHUNK):
        chunk = requests[start:start + CHUNK]
        rows = model.scores([r["message"] for r in chunk])
        for request, row in zip(chunk, rows, strict=True):
            out[request["request_id"]] = read_intents(model.labels, row)
    return out


def retrieve(store: Any, customer_ids: list[int], recent: int) -> dict[int, dict | None]:
    """Each customer's recent payments and refunds (None: unknown), as the Retriever answers."""
    return {cid: store.lookup(cid, recent) for cid in sorted(set(customer_ids))}


def explain_targets(requests: list[dict], classified: dict[str, dict],
                    customers: dict[int, dict | None]) -> dict[str, dict]:
    """The payment each request asks about (`decide.explain_target`), for requests that need
    an explanation and whose customer is known."""
    out = {}
    for request in requests:
        customer = customers.get(request["customer_id"])
        if customer is None:
            continue
        target = explain_target(classified[request["request_id"]]["intents"], customer)
        if target is not None:
            out[request["request_id"]] = target
    return out


def explain(model: Any, reference: Any, targets: dict[str, dict], prefer_gpu: bool) -> dict:
    """`explain.explain_payments` for every distinct payment asked about, a chunk per call (a
    chunk that fails is explained payment by payment, so one bad payment fails alone).
    {"by_request": {request_id: {transaction_id, text, score} or {transaction_id, error}},
    "device", "method", "version"}."""
    from unified_assets.serving.explain import explain_payments

    payments = list({p["transaction_id"]: p for p in targets.values()}.values())
    done: dict[str, dict] = {}
    device = method = None
    for start in range(0, len(payments), CHUNK):
        chunk = payments[start:start + CHUNK]
        try:
            groups = [(chunk, explain_payments(model, chunk, reference, prefer_gpu))]
        except Exception:  # noqa: BLE001 - one by one below, each failure named
            groups = []
            for payment in chunk:
                try:
                    groups.append(([payment], explain_payments(model, [payment], reference,
                                                               prefer_gpu)))
                except Exception as error:  # noqa: BLE001 - that payment's explanation fails
                    done[payment["transaction_id"]] = {
                        "error": f"{type(error).__name__}: {str(error)[:300]}"}
        for group, result in groups:
            device, method = result["device"], result["method"]
            for payment, text, score in zip(group, result["texts"], result["scores"], strict=True):
                done[payment["transaction_id"]] = {"text": text, "score": score}
    by_request = {rid: {"transaction_id": p["transaction_id"], **done[p["transaction_id"]]}
                  for rid, p in targets.items()}
    return {"by_request": by_request, "device": device, "method": method,
            "version": model.label, "payments": len(payments)}


def fraud_scores(model: Any, customers: dict[int, dict | None]) -> dict[int, dict[str, float]]:
    """Each known customer's recent payments scored by the fraud model, as the fraud service
    scores the payments the ingress sends it (`explain.payment_scores`)."""
    from unified_assets.serving.explain import payment_scores

    known = {cid: c for cid, c in customers.items() if c is not None}
    payments = [p for c in known.values() for p in c["transactions"]]
    scores: dict[str, float] = {}
    for start in range(0, len(payments), CHUNK):
        scores |= payment_scores(model, payments[start:start + CHUNK])
    return {cid: {p["transaction_id"]: scores[p["transaction_id"]] for p in c["transactions"]}
            for cid, c in known.items()}


def decide_request(request: dict, classified: dict, customer: dict | None,
                   scores: dict[str, float] | None, fraud_version: str | None,
                   explained: dict | None, explain_problem: str | None, rules: ServingRules,
                   versions: dict[str, str]) -> dict:
    """One request's record, as the online path decides it (`decide.decide`): an unknown
    customer is a 404 (rejected, nothing escalated); an explanation that could not be made
    escalates, as an explainer the policy does not let the request use does online."""
    base = {"request_id": request["request_id"], "line": request["line"],
            "customer_id": request["customer_id"], "message_chars": len(request["message"])}
    if customer is None:
        return {**base, "outcome": REJECTED, "status": 404,
                "reason": f"unknown customer {request['customer_id']}", "case_id": None,
                "versions": {k: v for k, v in versions.items() if k in ("intent", "customer_store")}}
    versions = dict(versions)
    explanation, problem = None, None
    if explain_target(classified["intents"], customer) is not None:
        if explained is not None and "text" in explained:
            explanation = explained["text"]
            versions["explain"] = versions.pop("explain_model")
        else:
            why = (explained or {}).get("error") or explain_problem or "no explanation made"
            problem = (ESCALATE, f"explainer unavailable: {why}")
    versions.pop("explain_model", None)
    fraud = FraudCheck(scores or {}, fraud_version, attempts=1)
    outcome = decide(classified, customer, fraud, explanation, problem, rules)
    return {**base, "intent": classified["intent"], "intents": classified["intents"],
            "confidence": round(classified["confidence"], 4), "outcome": outcome.decision,
            "status": 503 if outcome.decision == RETRY else 200, "reason": outcome.reason,
            "answer": outcome.answer, "explanation": explanation, "case_id": None,
            "versions": versions}
