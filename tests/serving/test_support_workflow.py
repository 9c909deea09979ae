"""The support workflow on a real Ray Serve (tests/serving/conftest.py): every intent end to
end, bad input, escalations as cases (CLI and the UI's job), the fraud service failing or
timing out, a promotion then a rollback while requests flow, and the GPU node lost. The
tests share one deployment and run in file order (the GPU node is lost last)."""

from __future__ import annotations

import threading
import time

import dagster as dg
import pytest

from tests.serving.conftest import MODEL, Customers, ServingWorld
from unified_assets.serving.audit import read_records
from unified_assets.serving.cases import list_cases

pytestmark = pytest.mark.slow

INTENT_VERSION = "support-intent v1"


def _part(body: dict, name: str) -> dict:
    return next(p for p in body["placements"] if p["part"] == name)


def _v(world: ServingWorld, family: str) -> str:
    return f"{MODEL} v{world.versions[family]}"


def test_each_intent_end_to_end(world: ServingWorld, customers: Customers):
    store = customers.store
    # Refund status: answered from the store, no payment to explain.
    status, refund = world.ask({"customer_id": customers.refund, "message": "Where is my refund?"})
    assert status == 200, refund
    assert (refund["intent"], refund["decision"], refund["case_id"]) == ("refund_status", "answer",
                                                                          None)
    expected = store.lookup(customers.refund)["refunds"][0]
    assert f"${expected['amount']:,.2f}" in refund["answer"] and expected["expected_by"] in refund["answer"]
    assert refund["model_versions"] == {"intent": INTENT_VERSION, "fraud": _v(world, "sklearn"),
                                        "customer_store": store.version}
    assert _part(refund, "explain")["action"] == "skip"

    # Decline reason: the newest declined payment explained on the GPU replica.
    status, decline = world.ask({"customer_id": customers.decline,
                                 "message": "why was my card declined yesterday?"})
    assert status == 200, decline
    assert (decline["intent"], decline["decision"]) == ("decline_reason", "answer"), decline
    declined = next(p for p in store.lookup(customers.decline)["transactions"]
                    if p["status"] == "declined")
    assert f"${declined['amount']:,.2f}" in decline["explanation"]
    assert "The main reasons:" in decline["explanation"] and decline["explanation"] in decline["answer"]
    explain = _part(decline, "explain")
    assert (explain["target"], explain["where"], explain["ok"]) == ("gpu", "ray pool gpu", True)
    assert explain["ran_on"]["node"] == world.gpu_node.node_id[:8] and explain["ran_on"]["gpu_ids"]
    assert explain["method"] == "occlusion"  # v1 is the trees: occlusion, in torch
    assert decline["model_versions"]["explain"] == _v(world, "sklearn")
    for name in ("classify", "retrieve", "fraud"):
        part = _part(decline, name)
        assert part["ok"] and part["target"] == "cpu" and part["ran_on"]["node"] != \
            world.gpu_node.node_id[:8], part

    # A fraud report and an unrelated question: a person handles them (policy), as cases.
    status, fraud = world.ask({"customer_id": customers.decline,
                               "message": "someone used my card, I did not make this payment"})
    assert status == 200 and fraud["intent"] == "fraud_report" and fraud["decision"] == "escalate"
    assert "escalate_intents" in fraud["reason"] and fraud["case_id"]
    status, other = world.ask({"customer_id": customers.refund,
                               "message": "how do I change my address"})
    assert status == 200 and (other["intent"], other["decision"]) == ("other", "escalate")
    opened = {c.case_id: c for c in list_cases(world.resources["decisions"], "open")}
    assert opened[fraud["case_id"]].customer_id == customers.decline
    assert opened[fraud["case_id"]].details["model_versions"]["fraud"] == _v(world, "sklearn")

    # Two questions in one message: both answered.
    status, both = world.ask({"customer_id": customers.decline,
                              "message": "where is my refund and why was my payment declined?"})
    assert status == 200 and set(both["intents"]) == {"refund_status", "decline_reason"}, both
    assert both["explanation"] and "refund" in both["answer"]

    # Every request's path is in the audit, with the versions it used.
    audit = {r["request_id"]: r for r in read_records(world.audit_path)}
    for body in (refund, decline, fraud, other, both):
        record = audit[body["request_id"]]
        assert record["outcome"] == body["decision"] and record["versions"] == body["model_versions"]
        assert {p["part"] for p in record["parts"]} == {"classify", "retrieve", "fraud", "explain"}
        assert record["plan_ms"] < 5
    assert audit[fraud["request_id"]]["case_id"] == fraud["case_id"]


@pytest.mark.parametrize("body, status, says", [
    (b'{"customer_id": 42, "message": ', 400, "not valid JSON"),
    (b"[1, 2]", 422, "expected a JSON object"),
    ({"customer_id": 42}, 422, "missing field(s) message"),
    ({"customer_id": 42, "message": "   "}, 422, "message is empty"),
    ({"customer_id": 42, "message": "refund? " * 300}, 413, "at most 1000"),
    ({"customer_id": "forty-two", "message": "hi"}, 422, "customer_id must be a positive integer"),
    ({"customer_id": 42, "message": "hi", "admin": True}, 422, "unknown field(s) admin"),
    ({"customer_id": 999_999, "message": "where is my refund"}, 404, "unknown customer 999999"),
    (b"x" * 20_000, 413, "bytes; at most"),
])
def test_bad_input_is_a_clear_4xx_and_nothing_is_escalated(world: ServingWorld, body, status, says):
    before = len(list_cases(world.resources["decisions"]))
    got, answer = world.ask(body)
    assert got == status and says in answer["error"], answer
    assert answer.get("case_id") is None
    assert len(list_cases(world.resources["decisions"])) == before
    record = next(r for r in read_records(world.audit_path, last=5)
                  if r["request_id"] == answer["request_id"])
    assert (record["outcome"], record["status"]) == ("rejected", status)


def test_after_bad_input_the_same_replica_still_answers(world: ServingWorld, customers: Customers):
    status, first = world.ask({"customer_id": customers.refund, "message": "refund status please"})
    world.ask(b"\xff\xfe not json at all")
    status, again = world.ask({"customer_id": customers.refund, "message": "refund status please"})
    assert status == 200 and again["decision"] == "answer"
    assert again["served_by"] == first["served_by"]  # the ingress replica never restarted


def test_cases_from_the_cli_and_the_ui_job(world: ServingWorld, customers: Customers,
                                           monkeypatch, capsys):
    from unified_assets.cli import main

    monkeypatch.setenv("UNIFIED_AI_HOME", str(world.settings.home))
    monkeypatch.delenv("UNIFIED_AI_SIGNING_KEY", raising=False)
    assert main(["ask", "I think my card was stolen", "--customer", str(customers.refund)]) == 0
    out = capsys.readouterr().out
    assert "decision: escalate" in out and "fraud_report" in out and "path:" in out
    case_id = next(line.split()[1] for line in out.splitlines() if line.startswith("case:"))
    assert main(["cases"]) == 0
    assert case_id in capsys.readouterr().out
    assert main(["cases", "resolve", case_id, "--by", "mallory", "--answer", "fine"]) == 1
    assert "may not approve" in capsys.readouterr().err
    assert main(["cases", "resolve", case_id, "--by", "alice", "--answer", "Card blocked"]) == 0
    assert main(["cases", "resolve", case_id, "--by", "bob", "--answer", "again"]) == 1
    assert "already resolved by alice" in capsys.readouterr().err
    resolved = {c.case_id: c for c in list_cases(world.resources["decisions"], "resolved")}
    assert (resolved[case_id].resolved_by, resolved[case_id].answer) == ("alice", "Card blocked")

    # The same from the UI: the resolve_support_case job.
    other = next(c for c in list_cases(world.resources["decisions"], "open"))
    from unified_assets.assets.serving import resolve_support_case_job

    run = resolve_support_case_job.execute_in_process(
        instance=world.instance, resources=world.resources, run_config={"ops": {
            "resolve_case_op": {"config": {"case_id": other.case_id, "by": "risk-officer",
                                           "answer": "Refund released"}}}})
    assert run.success
    assert other.case_id in {c.case_id for c in list_cases(world.resources["decisions"], "resolved")}


def test_a_failing_fraud_service_is_retried_then_escalated(world: ServingWorld,
                                                           customers: Customers):
    base = f"http://127.0.0.1:{world.http_port}"
    question = {"customer_id": customers.refund, "message": "where is my refund"}
    try:
        for route, error in (("/fraud-faulty/fail", "HTTP 500"),
                             ("/fraud-faulty/slow", "ReadTimeout")):
            world.deploy(fraud_url=base + route, fraud_attempts=3, fraud_timeout_s=0.5)
            status, answer = world.ask(question)
            assert status == 200 and answer["decision"] == "escalate", answer
            assert "fraud service unavailable after 3 attempt(s)" in answer["reason"]
            assert error in answer["reason"] and answer["case_id"]
            fraud = _part(answer, "fraud")
            assert (fraud["ok"], fraud["attempts"], len(fraud["errors"])) == (False, 3, 3)
            assert "fraud: 3 attempts" in answer["fallbacks"]
            assert "fraud" not in answer["model_versions"]
    finally:
        world.deploy()
    status, answer = world.ask(question)
    assert answer["decision"] == "answer" and _part(answer, "fraud")["attempts"] == 1


def test_promotion_then_rollback_moves_live_traffic(world: ServingWorld, customers: Customers):
    from unified_assets.assets.serving import build_serving_sensor

    question = {"customer_id": customers.decline, "message": "why was my payment declined"}
    seen: list[tuple[float, float, int, dict]] = []  # sent, answered, status, versions
    stop = threading.Event()

    def traffic() -> None:
        while not stop.is_set():
            sent = time.monotonic()
            status, answer = world.ask(question)
            seen.append((sent, time.monotonic(), status, answer.get("model_versions", {})))

    sensor = build_serving_sensor()

    def sensor_says() -> dg.RunRequest | dg.SkipReason:
        with dg.build_sensor_context(instance=world.instance,
                                     resources=world.resources) as context:
            return sensor(context)

    def answered_since(moment: float, count: int = 3) -> None:
        deadline = time.monotonic() + 60
        while sum(sent > moment for sent, *_ in seen) < count:
            assert time.monotonic() < deadline, "no traffic got through"
            time.sleep(0.1)

    v1, v2 = _v(world, "sklearn"), _v(world, "torch")
    ledger = world.ledger()
    thread = threading.Thread(target=traffic, daemon=True)
    thread.start()
    try:
        time.sleep(0.8)
        ledger.promote(MODEL, world.versions["torch"], "alice", "tests: v2 is better",
                       evaluated_against=world.versions["sklearn"])
        assert isinstance(sensor_says(), dg.RunRequest)  # serving lags the champion
        world.deploy()
        promoted = time.monotonic()
        assert isinstance(sensor_says(), dg.SkipReason)
        answered_since(promoted)
        rolling_back = time.monotonic()
        ledger.rollback(MODEL, "alice", "tests: live regression")
        world.deploy()
        rolled_back = time.monotonic()
        answered_since(rolled_back)
    finally:
        stop.set()
        thread.join(timeout=60)
    assert seen and all(status == 200 for _, _, status, _ in seen)
    # Every response names the versions that produced it.
    assert all(versions.get("fraud") and versions.get("explain") for *_, versions in seen)
    during = [v for sent, done, _, v in seen if sent > promoted and done < rolling_back]
    after = [v for sent, _, _, v in seen if sent > rolled_back]
    assert during and all(v["fraud"] == v2 and v["explain"] == v2 for v in during), seen
    assert after and all(v["fraud"] == v1 and v["explain"] == v1 for v in after), seen
    metadata = world.deployments[-1].asset_materializations_for_node("serving")[0].metadata
    assert metadata["champion_version"].value == world.versions["sklearn"]


def test_losing_the_gpu_node_degrades_the_explainer_as_the_policy_says(world: ServingWorld,
                                                                     customers: Customers):
    from unified_assets.placement.ray_capacity import fetch_ray_capacity

    node_id = world.gpu_node.node_id
    world.cluster.remove_node(world.gpu_node, allow_graceful=False)
    deadline = time.monotonic() + 60
    while (node := fetch_ray_capacity(world.dashboard).node(node_id)) is not None and node.alive:
        assert time.monotonic() < deadline, "Ray never declared the GPU node dead"
        time.sleep(0.5)
    status, answer = world.ask({"customer_id": customers.decline,
                                "message": "why was my card declined?"})
    assert status == 200 and answer["decision"] == "answer", answer
    explain = _part(answer, "explain")
    assert (explain["action"], explain["target"], explain["fallback"], explain["ok"]) == (
        "twin", "cpu", "degrade_to_cpu", True), explain
    assert "degraded to cpu" in explain["reason"] and "rule of profiles.gpu-training" in explain["reason"]
    assert explain["ran_on"]["node"] != node_id[:8] and not explain["ran_on"]["gpu_ids"]
    assert answer["explanation"] and answer["model_versions"]["explain"] == _v(world, "sklearn")
    assert "explain: degrade_to_cpu" in answer["fallbacks"]
    record = next(r for r in read_records(world.audit_path, last=3)
                  if r["request_id"] == answer["request_id"])
    assert record["fallbacks"] == answer["fallbacks"]
