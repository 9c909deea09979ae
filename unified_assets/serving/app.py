"""The Ray Serve deployments of the support workflow and the fraud service.

Two applications, deployed from a Serve config (`deploy.serve_config`, the same document a
KubeRay RayService carries):

- `support` (route /support): `SupportIngress` takes `POST /support`, plans the request
  (`routing.plan_request`), calls `Classifier`, `Retriever` and `Explainer` through
  deployment handles and the fraud service over HTTP, decides (`decide.decide`), opens a case
  when it escalates and appends the request's audit record;
- `fraud` (route /fraud): `FraudModel`, the champion as its own service; it is also the
  explainer's CPU twin (it holds the same model version).

Everything that changes between deployments (model versions, URLs, rules, placements) is
each deployment's `user_config`, applied by `reconfigure` in place: a promotion or a
rollback swaps the model in the running replicas, without restarting them. Only the Ray
cluster imports this module (it imports ray); the code location never does.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import math
import os
import time
import uuid
from datetime import UTC, datetime
from typing import Any

from ray import serve
from starlette.requests import Request
from starlette.responses import JSONResponse

from unified_assets.serving.breaker import Breaker
from unified_assets.serving.decide import (
    ESCALATE,
    RETRY,
    BadRequest,
    FraudCheck,
    decide,
    explain_target,
    parse_request,
)
from unified_assets.serving.profiles import FRAUD_APP, MAX_ONGOING_REQUESTS, PARTS, ServingRules
from unified_assets.serving.routing import (
    CALL,
    SKIP,
    TWIN,
    WAIT,
    LiveView,
    PartPlacement,
    nodes_from_ray,
    plan_request,
)

# The replicas' state is read every LIVE_REFRESH_S, the nodes every NODES_EVERY-th time:
# each read is a call to the Serve controller or the GCS, which every replica would pay.
LIVE_REFRESH_S = 2.0
NODES_EVERY = 3
# A plan that would fall back is made again on state read now when the view is older than
# this: a replica that came up since the last refresh must not be bypassed.
FRESH_S = 0.25
DECISIONS_URL_ENV = "UNIFIED_AI_DECISIONS_URL"  # production: a secret, never in user_config
LEDGER_KEY_ENV = "UNIFIED_AI_LEDGER_KEY"


def ran_on() -> dict:
    """Where this replica runs: its Ray node and the GPUs Ray gave it."""
    import ray

    context = ray.get_runtime_context()
    return {"node": context.get_node_id()[:8], "gpu_ids": [str(g) for g in ray.get_gpu_ids()],
            "pid": os.getpid()}


def _single_thread() -> None:
    """One math thread per replica: replicas share a few cores; more threads only contend."""
    import torch

    torch.set_num_threads(1)


class ExplainerCore:
    """The champion loaded for explanations: used by the GPU explainer and the CPU twin."""

    def __init__(self) -> None:
        self.key: tuple | None = None
        self.model: Any = None
        self.reference: Any = None
        self.prefer_gpu = False

    def configure(self, config: dict, prefer_gpu: bool) -> None:
        from unified_assets.serving.customers import StoreSpec, build_store
        from unified_assets.serving.explain import load_fraud_model

        fraud = config["fraud_model"]
        key = (fraud["tracking_uri"], fraud["name"], fraud["version"], json.dumps(config["store"]))
        if key != self.key:
            model = load_fraud_model(fraud["name"], fraud["version"], fraud["tracking_uri"],
                                     fraud["numeric"], fraud["categorical"])
            reference = build_store(StoreSpec(**config["store"])).frame
            self.model, self.reference, self.key = model, reference, key
        self.prefer_gpu = prefer_gpu

    def explain(self, payments: list[dict]) -> dict:
        from unified_assets.serving.explain import explain_payments

        model = self.model  # one reference: a reconfigure never mixes two versions in one answer
        return {**explain_payments(model, payments, self.reference, self.prefer_gpu),
                "ran_on": ran_on()}


@serve.deployment(name="Classifier", max_ongoing_requests=MAX_ONGOING_REQUESTS["Classifier"])
class Classifier:
    """The intent of a message (the support-intent model version named in user_config)."""

    def __init__(self) -> None:
        self.key: tuple | None = None
        self.model: Any = None
        self.label = ""

    def reconfigure(self, config: dict) -> None:
        from unified_assets.serving.intent_model import load_intent_model

        intent = config["intent_model"]
        key = (intent["tracking_uri"], intent["name"], intent["version"])
        if key != self.key:
            self.model, self.label = load_intent_model(intent["name"], intent["version"],
                                                       intent["tracking_uri"])
            self.key = key

    def classify(self, text: str) -> dict:
        model, label = self.model, self.label
        return {**model.classify(text), "version": label, "ran_on": ran_on()}


@serve.deployment(name="Retriever", max_ongoing_requests=MAX_ONGOING_REQUESTS["Retriever"])
class Retriever:
    """A customer's recent payments and refunds from the store (`customers.build_store`)."""

    def __init__(self) -> None:
        self.store: Any = None

    def reconfigure(self, config: dict) -> None:
        from unified_assets.serving.customers import StoreSpec, build_store

        spec = StoreSpec(**config["store"])
        if self.store is None or self.store.spec != spec:
            self.store = build_store(spec)

    def lookup(self, customer_id: int, recent: int) -> dict:
        store = self.store
        return {"customer": store.lookup(customer_id, recent), "version": store.version,
                "ran_on": ran_on()}


@serve.deployment(name="Explainer", max_ongoing_requests=MAX_ONGOING_REQUESTS["Explainer"])
class Explainer:
    """Per-feature attributions of the champion (torch; CUDA when the replica has it)."""

    def __init__(self) -> None:
        _single_thread()
        self.core = ExplainerCore()

    def reconfigure(self, config: dict) -> None:
        self.core.configure(config, prefer_gpu=bool(config.get("prefer_gpu")))

    def explain(self, payments: list[dict]) -> dict:
        return self.core.explain(payments)


@serve.deployment(name="FraudModel", max_ongoing_requests=MAX_ONGOING_REQUESTS["FraudModel"])
class FraudModel:
    """The champion fraud model as a service: `POST /fraud` {"rows": [payment, ...]} ->
    {"scores": {transaction_id: P(fraud)}, "version": ...}; also the explainer's CPU twin."""

    def __init__(self) -> None:
        _single_thread()
        self.core = ExplainerCore()

    def reconfigure(self, config: dict) -> None:
        self.core.configure(config, prefer_gpu=False)

    async def __call__(self, request: Request) -> JSONResponse:
        import pandas as pd

        try:
            payload = await request.json()
            rows = payload["rows"]
            if not isinstance(rows, list) or not rows or not all(isinstance(r, dict) for r in rows):
                raise ValueError("rows must be a non-empty list of payments")
            frame = pd.DataFrame(rows)
        except (ValueError, KeyError, TypeError) as error:
            return JSONResponse({"error": f"bad request: {error}"}, status_code=400)
        from unified_assets.serving.explain import payment_scores

        model = self.core.model
        try:
            scores = payment_scores(model, rows, frame)
        except (ValueError, KeyError, TypeError) as error:  # missing feature columns and the like
            return JSONResponse({"error": f"cannot score these rows: {error}"}, status_code=422)
        return JSONResponse({"scores": scores, "version": model.label, "ran_on": ran_on()})

    def explain(self, payments: list[dict]) -> dict:
        return self.core.explain(payments)


def _import_store() -> None:
    import resources.decision_store  # noqa: F401


async def _awaited(response: Any) -> Any:
    return await response


@serve.deployment(name="SupportIngress", max_ongoing_requests=MAX_ONGOING_REQUESTS["SupportIngress"])
class SupportIngress:
    """`POST /support` {customer_id, message}: the workflow of one support request."""

    async def __init__(self, classifier: Any, retriever: Any, explainer: Any) -> None:
        import httpx

        self.classifier, self.retriever, self.explainer = classifier, retriever, explainer
        self.twin: Any = None  # the fraud service's handle, made on first use
        self.http = httpx.AsyncClient()
        self.live = LiveView()
        self.explaining = 0
        self.in_flight = 0  # requests this replica works on now (`max_in_flight`)
        self.config: dict = {}
        self.store: Any = None
        self.served_by = ran_on()
        self.refresher = asyncio.get_running_loop().create_task(self._refresh_forever())
        # The decision store (dagster, sqlalchemy, alembic) is imported now, in the
        # background, rather than by the first escalated request (seconds).
        self.warm = asyncio.get_running_loop().create_task(asyncio.to_thread(_import_store))

    def reconfigure(self, config: dict) -> None:
        from unified_assets.placement.policy import DEFAULT_POLICY, PlacementPolicy

        self.rules = ServingRules(**config["rules"])
        # The fraud breaker starts closed when its limits or the service's URL change.
        limits = (self.rules.fraud_breaker_failures, self.rules.fraud_breaker_open_s)
        if (limits, config.get("fraud_url")) != getattr(self, "breaker_for", None):
            self.breaker, self.breaker_for = Breaker(*limits), (limits, config.get("fraud_url"))
        # The policy's placement rules as the deployment read them; a hand-written config
        # (deploy/ray/rayservice.yaml) may leave them out: the shipped rules then apply.
        self.placement = (PlacementPolicy.model_validate(config["placement_policy"])
                          if config.get("placement_policy") else DEFAULT_POLICY)
        self.deployed: dict[str, dict] = config["placements"]
        if config.get("decisions_url") != self.config.get("decisions_url"):
            self.store = None
        self.config = config

    # the live state of the replicas -------------------------------------------------------

    async def _refresh_forever(self) -> None:
        for count in itertools.count():
            # A failed read keeps the last view: requests still plan on it.
            with contextlib.suppress(Exception):
                self.live = await asyncio.to_thread(self._read_live, count % NODES_EVERY == 0)
            await asyncio.sleep(LIVE_REFRESH_S)

    def _read_live(self, nodes: bool = True) -> LiveView:
        import ray

        status = serve.status()
        running: dict[str, int] = {}
        for app in status.applications.values():
            for name, deployment in app.deployments.items():
                running[name] = sum(count for state, count in deployment.replica_states.items()
                                    if getattr(state, "value", state) == "RUNNING")
        target = {PARTS[part][0]: n for part, n in self.config.get("replicas", {}).items()}
        seen = nodes_from_ray(ray.nodes()) if nodes or not self.live.nodes else self.live.nodes
        return LiveView(running, target, seen, time.time())

    async def _wait_for_replica(self, part: str) -> bool:
        deadline = time.monotonic() + self.rules.latency_budget_s
        name = PARTS[part][0]
        while time.monotonic() < deadline:
            if self.live.running.get(name, 0):
                return True
            await asyncio.sleep(0.1)
        return False

    # parts ----------------------------------------------------------------------------------

    async def _call(self, placement: PartPlacement, call: Any) -> dict:
        """Run one part as placed; a record of where it ran, how long it took, how it ended."""
        started = time.perf_counter()
        record: dict = {**placement.as_dict(), "ok": False}
        try:
            if placement.action == WAIT and not await self._wait_for_replica(placement.part):
                raise TimeoutError(f"no replica within the latency budget "
                                   f"({self.rules.latency_budget_s}s)")
            if placement.action not in (CALL, WAIT, TWIN):
                raise RuntimeError(placement.reason)
            result = await asyncio.wait_for(_awaited(call()), self.rules.part_timeout_s)
            record |= {"ok": True, "result": result, "ran_on": result.get("ran_on")}
        except Exception as error:  # noqa: BLE001 - a part's failure is an outcome of the request
            record["error"] = f"{type(error).__name__}: {str(error)[:300]}"
        record["latency_ms"] = round((time.perf_counter() - started) * 1000, 1)
        return record

    def _twin_handle(self) -> Any:
        if self.twin is None:
            self.twin = serve.get_deployment_handle(PARTS["fraud"][0], app_name=FRAUD_APP)
        return self.twin

    async def _fraud(self, payments: list[dict]) -> tuple[FraudCheck, dict]:
        """The fraud service over HTTP: a timeout per attempt, retries with backoff."""
        rules, url = self.rules, self.config["fraud_url"]
        started, errors, attempt = time.perf_counter(), [], 0
        body, ran = None, None
        wait_s = self.breaker.admit()
        if wait_s is not None:
            why = self.breaker.why_open(wait_s)
            return FraudCheck(attempts=0, errors=(why,), open_for_s=wait_s), {
                "ok": False, "attempts": 0, "errors": [why], "url": url, "ran_on": None,
                "breaker_open_s": round(wait_s, 1), "latency_ms": 0.0}
        for attempt in range(1, rules.fraud_attempts + 1):
            try:
                response = await self.http.post(url, json={"rows": payments},
                                                timeout=rules.fraud_timeout_s)
                if response.status_code == 200:
                    body = response.json()
                    break
                errors.append(f"HTTP {response.status_code}: {response.text[:120]}")
            except Exception as error:  # noqa: BLE001 - timeouts, refused connections, bad JSON
                errors.append(f"{type(error).__name__}: {str(error)[:120] or 'no detail'}")
            if attempt < rules.fraud_attempts:
                await asyncio.sleep(rules.fraud_backoff_s * 2 ** (attempt - 1))
        if body is not None:
            check = FraudCheck(body["scores"], body["version"], attempt, tuple(errors))
            ran = body.get("ran_on")
        else:
            check = FraudCheck(attempts=attempt, errors=tuple(errors))
        self.breaker.record(check.ok, errors[-1] if errors else "")
        record = {"ok": check.ok, "attempts": attempt, "errors": errors, "url": url,
                  "ran_on": ran, "latency_ms": round((time.perf_counter() - started) * 1000, 1)}
        return check, record

    async def _explain(self, placement: PartPlacement, payment: dict) -> dict:
        """The explanation as placed; a failed GPU call falls back as the policy says."""
        if placement.action == TWIN:
            return await self._call(placement, lambda: self._twin_handle().explain.remote([payment]))
        self.explaining += 1  # this replica's explanations in flight (saturation, routing.py)
        try:
            record = await self._call(placement, lambda: self.explainer.explain.remote([payment]))
        finally:
            self.explaining -= 1
        if record["ok"] or placement.action not in (CALL, WAIT):
            return record
        # The replica failed or timed out although planned: plan again as if it were gone.
        gone = LiveView({**self.live.running, PARTS["explain"][0]: 0}, self.live.target,
                        self.live.nodes, time.time())
        again = plan_request(self.deployed, gone, self.placement)["explain"]
        again = PartPlacement(again.part, again.target, again.where,
                              f"at call: {record['error']}; {again.reason}", again.action,
                              again.fallback)
        if again.action == TWIN:
            retried = await self._call(again, lambda: self._twin_handle().explain.remote([payment]))
            return {**retried, "first_attempt": record}
        return {**again.as_dict(), "ok": False, "error": record["error"],
                "latency_ms": record["latency_ms"]}

    # the request ----------------------------------------------------------------------------

    async def __call__(self, request: Request) -> JSONResponse:
        started = time.perf_counter()
        request_id = uuid.uuid4().hex[:16]
        audit: dict = {"request_id": request_id, "at": datetime.now(UTC).isoformat()}
        if self.in_flight >= self.rules.max_in_flight:
            # Shed before any work: a request queued behind the limit would be answered late
            # (or time out at the client) and slow every request admitted before it.
            return self._finish(audit, started, 503, {
                "decision": RETRY, "reason": f"overloaded: this replica is working on "
                f"{self.in_flight} requests, its limit (max_in_flight); try again shortly"},
                "shed", retry_after=1)
        self.in_flight += 1
        try:
            try:
                customer_id, message = parse_request(await request.body(), self.rules)
            except BadRequest as bad:
                return self._finish(audit, started, bad.status, {"error": str(bad)}, "rejected")
            audit |= {"customer_id": customer_id, "message_chars": len(message)}
            try:
                return await self._workflow(audit, started, customer_id, message)
            except Exception as error:  # noqa: BLE001 - the replica stays up; the request fails
                return self._finish(audit, started, 500,
                                    {"error": f"internal error: {type(error).__name__}: {error}"},
                                    "error")
        finally:
            self.in_flight -= 1

    async def _workflow(self, audit: dict, started: float, customer_id: int,
                        message: str) -> JSONResponse:
        rules = self.rules
        plan_started = time.perf_counter()
        plan = plan_request(self.deployed, self.live, self.placement,
                            explain_in_flight=self.explaining)
        audit["plan_ms"] = round((time.perf_counter() - plan_started) * 1000, 3)
        if any(p.action != CALL for p in plan.values()) and time.time() - self.live.taken_at > FRESH_S:
            try:
                self.live = await asyncio.to_thread(self._read_live)
            except Exception as error:  # noqa: BLE001 - Ray's state did not answer (a busy GCS)
                # The plan stands on the last state read; the request is not failed for it.
                audit["live_state_error"] = f"{type(error).__name__}: {str(error)[:200]}"
            else:
                plan = plan_request(self.deployed, self.live, self.placement,
                                    explain_in_flight=self.explaining)
                audit["replanned_on_fresh_state"] = True
        classified, retrieved = await asyncio.gather(
            self._call(plan["classify"], lambda: self.classifier.classify.remote(message)),
            self._call(plan["retrieve"],
                       lambda: self.retriever.lookup.remote(customer_id, rules.recent_transactions)))
        parts = {"classify": classified, "retrieve": retrieved}
        versions: dict[str, str] = {}
        for name, key in (("classify", "intent"), ("retrieve", "customer_store")):
            if parts[name]["ok"]:
                versions[key] = parts[name]["result"]["version"]
        failed = [name for name in ("classify", "retrieve") if not parts[name]["ok"]]
        if failed:
            why = "; ".join(f"{n}: {parts[n].get('error')}" for n in failed)
            return self._finish(audit, started, 503, {
                "decision": RETRY, "reason": f"part(s) unavailable, try again: {why}"}, RETRY,
                parts=parts, versions=versions)
        customer = retrieved["result"]["customer"]
        if customer is None:
            return self._finish(audit, started, 404, {"error": f"unknown customer {customer_id}"},
                                "rejected", parts=parts, versions=versions)
        intent = classified["result"]
        audit |= {"intent": intent["intent"], "intents": intent["intents"],
                  "confidence": round(intent["confidence"], 4)}
        target = explain_target(intent["intents"], customer)
        explain_plan = plan["explain"] if target else PartPlacement(
            "explain", "none", "-", "the intent asks about no payment", SKIP)
        fraud_task = self._fraud(customer["transactions"])
        if target is not None:
            (fraud, fraud_record), explained = await asyncio.gather(
                fraud_task, self._explain(explain_plan, target))
        else:
            (fraud, fraud_record), explained = await fraud_task, {**explain_plan.as_dict(),
                                                                  "ok": True, "latency_ms": 0.0}
        parts["fraud"] = {**plan["fraud"].as_dict(), **fraud_record}
        parts["explain"] = explained
        if fraud.ok:
            versions["fraud"] = fraud.version
        explanation, problem = None, None
        if target is not None:
            if explained.get("ok"):
                result = explained["result"]
                explanation, versions["explain"] = result["texts"][0], result["version"]
            elif explained.get("action") == WAIT:
                problem = (RETRY, f"explainer: {explained.get('error')} ({explained['reason']})")
            else:
                problem = (ESCALATE, f"explainer unavailable: {explained.get('error')} "
                           f"({explained['reason']})")
        outcome = decide(intent, customer, fraud, explanation, problem, rules)
        body = {"decision": outcome.decision, "reason": outcome.reason, "answer": outcome.answer,
                "explanation": explanation, "case_id": None}
        if outcome.decision == ESCALATE:
            body["case_id"] = await asyncio.to_thread(self._open_case, audit, message, intent,
                                                     outcome, versions)
        return self._finish(audit, started, 503 if outcome.decision == RETRY else 200, body,
                            outcome.decision, parts=parts, versions=versions)

    def _open_case(self, audit: dict, message: str, intent: dict, outcome: Any,
                   versions: dict) -> str:
        from resources.decision_store import DecisionStore
        from unified_assets.serving.cases import open_request_case

        if self.store is None:
            url = os.environ.get(DECISIONS_URL_ENV) or self.config["decisions_url"]
            self.store = DecisionStore(url=url, chain_key=os.environ.get(LEDGER_KEY_ENV) or None)
        return open_request_case(self.store, request_id=audit["request_id"],
                                 customer_id=audit["customer_id"], message=message,
                                 intents=intent["intents"], reason=outcome.reason,
                                 draft_answer=outcome.answer, model_versions=versions)

    def _finish(self, audit: dict, started: float, status: int, body: dict, outcome: str,
                parts: dict | None = None, versions: dict | None = None,
                retry_after: int | None = None) -> JSONResponse:
        """The response and its audit record: the same facts, written once."""
        from unified_assets.serving.audit import append_record

        latency = round((time.perf_counter() - started) * 1000, 1)
        placements = [_placement_view(name, record) for name, record in (parts or {}).items()]
        fallbacks = [f"{p['part']}: {p['fallback']}" for p in placements
                     if p.get("fallback") not in (None, "none")]
        fallbacks += [f"fraud: {p['attempts']} attempts" for p in placements
                      if p["part"] == "fraud" and p.get("attempts", 1) > 1]
        fallbacks += ["fraud: breaker open" for p in placements
                      if p["part"] == "fraud" and p.get("breaker_open_s")]
        response = {"request_id": audit["request_id"], **{k: audit.get(k) for k in (
            "customer_id", "intent", "intents", "confidence")}, **body,
            "model_versions": versions or {}, "placements": placements, "fallbacks": fallbacks,
            "latency_ms": latency, "served_by": self.served_by}
        record = {**audit, "outcome": outcome, "status": status, "reason": body.get("reason")
                  or body.get("error"), "case_id": body.get("case_id"), "latency_ms": latency,
                  "parts": placements, "fallbacks": fallbacks, "versions": versions or {}}
        try:
            append_record(self.config["audit_path"], record)
        except OSError as error:  # the answer still goes out; the gap is visible in the answer
            response["audit_error"] = str(error)
        retry_after = retry_after or max((math.ceil(p["breaker_open_s"]) for p in
                                          (parts or {}).values() if p.get("breaker_open_s")),
                                         default=5)
        headers = {"Retry-After": str(retry_after)} if status == 503 else None
        return JSONResponse(response, status_code=status, headers=headers)


def _placement_view(name: str, record: dict) -> dict:
    """A part's record without its payload: where it ran, why, how long, how it ended."""
    keep = ("target", "where", "reason", "action", "fallback", "ok", "error", "latency_ms",
            "ran_on", "attempts", "errors", "url", "breaker_open_s")
    view = {"part": name, **{k: record[k] for k in keep if k in record}}
    result = record.get("result")
    if isinstance(result, dict) and "device" in result:
        view["device"], view["method"] = result["device"], result.get("method")
    if "first_attempt" in record:
        view["first_attempt_error"] = record["first_attempt"].get("error")
    return view


def support_app(args: dict) -> Any:
    """The `support` application (import path for the Serve config)."""
    return SupportIngress.bind(Classifier.bind(), Retriever.bind(), Explainer.bind())


def fraud_app(args: dict) -> Any:
    """The `fraud` application: the champion as its own service."""
    return FraudModel.bind()
