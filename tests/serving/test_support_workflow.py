"""The support workflow on a real Ray Serve (tests/serving/conftest.py): every intent end to
end, bad input, escalations as cases (CLI and the UI's job), the fraud service failing or
timing out, a promotion then a rollback while requests flow, scaling on traffic, and the GPU
node lost. The tests share one deployment (one Ray cluster: it takes a minute or two to
build) and run in file order (the GPU node is lost last).

Scaling on traffic: `serving` redeployed under a policy whose ingress scales quickly (1..2
replicas, one ongoing request per replica, sub-second delays; every other part pinned at one
replica so nothing else moves on two cores), a burst of concurrent requests scales it up and,
once the burst ends, down; the `serving_scaling` sensor, ticked as the daemon would, records
both on `serving`. Plus the sensor's skips and its traffic figures, without Ray."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

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
    assert status == 200, refund.get("error", refund)
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


def test_a_failing_fraud_service_is_retried_then_escalated_and_overload_is_shed(
        world: ServingWorld, customers: Customers):
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
        # The breaker: after 2 requests in a row failed their check, the replica stops calling
        # the service; a request is a retry at once, not one more case.
        world.deploy(fraud_url=base + "/fraud-faulty/fail", fraud_attempts=2,
                     fraud_timeout_s=0.5, fraud_breaker_failures=2, fraud_breaker_open_s=120)
        asked = [world.ask(question) for _ in range(2)]
        while asked[-1][0] != 503 and len(asked) < 8:  # a replica per 2 failures, if scaled up
            asked.append(world.ask(question))
        *before, (status, kept) = asked
        assert status == 503 and kept["decision"] == "retry", kept
        assert all(a["decision"] == "escalate" and _part(a, "fraud")["attempts"] == 2
                   for _, a in before), before
        assert "circuit open: 2 request(s) in a row" in kept["reason"] and "HTTP 500" in kept["reason"]
        assert kept["case_id"] is None and "fraud: breaker open" in kept["fallbacks"]
        fraud = _part(kept, "fraud")
        assert fraud["attempts"] == 0 and 0 < fraud["breaker_open_s"] <= 120
        # A fraud report goes to a person either way.
        status, reported = world.ask({"customer_id": customers.refund,
                                      "message": "someone used my card, I did not make this payment"})
        assert status == 200 and reported["decision"] == "escalate" and reported["case_id"]
        # Overload is answered, not queued (`max_in_flight`).
        world.deploy(fraud_url=base + "/fraud-faulty/slow", fraud_attempts=1, fraud_timeout_s=3,
                     fraud_breaker_failures=0, max_in_flight=1, replicas={"ingress": 1})
        _shed_burst(world, question, len(list_cases(world.resources["decisions"])))
    finally:
        world.deploy()
    status, answer = world.ask(question)
    assert answer["decision"] == "answer" and _part(answer, "fraud")["attempts"] == 1


def _ask_with_headers(world: ServingWorld, body: dict) -> tuple[int, dict, dict]:
    import urllib.error
    import urllib.request

    request = urllib.request.Request(world.url, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            headers, status, text = response.headers, response.status, response.read()
    except urllib.error.HTTPError as error:
        headers, status, text = error.headers, error.code, error.read()
    return status, {k.lower(): v for k, v in headers.items()}, json.loads(text or b"{}")


def _shed_burst(world: ServingWorld, question: dict, cases_before: int) -> None:
    """Four requests at once to one ingress replica working on at most one (`max_in_flight`),
    the admitted one held by a fraud service that does not answer: the others are a 503 with
    Retry-After before any work, audited as `shed`, no case; answered while the admitted one
    still runs."""
    done: list[tuple[int, dict, dict]] = []
    threads = [threading.Thread(target=lambda: done.append(_ask_with_headers(world, question)))
               for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert len(done) == 4

    def overloaded(body: dict) -> bool:
        return body.get("reason", "").startswith("overloaded")

    shed = [(h, b) for _, h, b in done if overloaded(b)]
    admitted = [(status, b) for status, _, b in done if not overloaded(b)]
    assert shed and admitted, done
    for headers, body in shed:
        assert body["decision"] == "retry" and body.get("case_id") is None, body
        assert "limit (max_in_flight)" in body["reason"] and headers.get("retry-after") == "1"
        assert body["placements"] == [] and body["model_versions"] == {}
    for status, body in admitted:  # ran the workflow: the fraud check timed out, a case
        assert status == 200 and body["decision"] == "escalate", body
        assert "fraud service unavailable" in body["reason"] and body["case_id"]
    # Shed before any work: every shed request was answered before the first admitted one.
    first_admitted = min(i for i, (*_, b) in enumerate(done) if not overloaded(b))
    assert all(i < first_admitted for i, (*_, b) in enumerate(done) if overloaded(b)), [
        b.get("decision") for *_, b in done]
    records = {r["request_id"]: r for r in read_records(world.audit_path, last=20)}
    for _, body in shed:
        assert (records[body["request_id"]]["outcome"], records[body["request_id"]]["status"]
                ) == ("shed", 503)
    assert len(list_cases(world.resources["decisions"])) == cases_before + len(admitted)


def test_promotion_then_rollback_moves_live_traffic(world: ServingWorld, customers: Customers):
    from unified_assets.assets.serving import build_serving_sensor
    from unified_assets.serving.follow import follow_champion, observation, served

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
    deployed = len(world.deployments)
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
        # The rollback as `production_model` runs it: the ledger's change, then live traffic
        # follows in the same run (the running deployments reconfigured in place), recorded
        # as an observation on `serving`; no redeployment, no sensor.
        ledger.rollback(MODEL, "alice", "tests: live regression")
        followed = follow_champion(world.instance, MODEL, world.versions["sklearn"])
        rolled_back = time.monotonic()
        assert followed.status == "updated", followed
        assert f"from v{world.versions['torch']} to v{world.versions['sklearn']}" in followed.message
        world.instance.report_runless_asset_event(
            observation(MODEL, world.versions["sklearn"], followed, "test"))
        assert served(world.instance).version == world.versions["sklearn"]
        assert isinstance(sensor_says(), dg.SkipReason)
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
    # No redeployment: a `serving` materialization for the promotion, none for the rollback.
    assert len(world.deployments) == deployed + 1


SCALED = "SupportIngress"
PINNED = {"min_replicas": 1, "max_replicas": 1}
QUICK = {"min_replicas": 1, "max_replicas": 2, "target_ongoing_requests": 1,
         "upscale_delay_s": 0.5, "downscale_delay_s": 1.5, "look_back_period_s": 1.5,
         "metrics_interval_s": 0.5}
BURST_THREADS = 8
WAIT_S = 90  # for Serve to act; generous: other suites share the two cores


def _tick(sensor: dg.SensorDefinition, instance: dg.DagsterInstance, resources: dict,
          cursor: str | None) -> tuple[str, str | None]:
    """One evaluation as the daemon runs it: observations stored, the cursor kept; what it
    said when it skipped ("" when it recorded something)."""
    with dg.build_sensor_context(instance=instance, cursor=cursor, resources=resources) as context:
        result = sensor(context)
    if isinstance(result, dg.SkipReason):
        return result.skip_message or "", cursor
    assert isinstance(result, dg.SensorResult) and not result.run_requests
    for event in result.asset_events or []:
        instance.report_runless_asset_event(event)
    skipped = result.skip_reason.skip_message if result.skip_reason else ""
    return skipped or "", result.cursor or cursor


def _observations(instance: dg.DagsterInstance) -> list[dict]:
    """The scaling observations on `serving`, oldest first (not the champion swaps a
    promotion or rollback records there: those carry `champion_version`)."""
    records = instance.fetch_observations(dg.AssetKey("serving"), limit=100).records
    return [{k: v.value for k, v in r.asset_observation.metadata.items()}
            for r in sorted(records, key=lambda r: r.storage_id)
            if "champion_version" not in r.asset_observation.metadata]


def _serve_state(world: ServingWorld) -> dict:
    from unified_assets.serving.deploy import serve_details
    from unified_assets.serving.scaling import read_scales

    return {n: (s.running, s.target, s.status) for n, s in read_scales(
        serve_details(world.dashboard)).items()}


def test_a_burst_scales_the_ingress_up_then_down_and_both_are_observed(
        world: ServingWorld, tmp_path: Path):
    from resources import PolicyResource
    from tests.policies import write_policy
    from unified_assets.assets.serving import build_scaling_sensor, serving, support_intent_model

    rules = {name: PINNED for name in ("Classifier", "Retriever", "Explainer", "FraudModel")}
    policy = write_policy(tmp_path, {"serving": {"autoscaling": {**rules, SCALED: QUICK}}})
    resources = {**world.resources, "policy": PolicyResource(path=str(policy))}
    deployed = dg.materialize(
        [support_intent_model, serving], selection=[serving], resources=resources,
        instance=world.instance,
        run_config={"ops": {"serving": {"config": {"http_port": world.http_port}}}})
    assert deployed.success
    metadata = deployed.asset_materializations_for_node("serving")[0].metadata
    sent = metadata["autoscaling_config"].value
    assert sent[SCALED]["autoscaling_config"] == QUICK
    assert sent["Classifier"]["autoscaling_config"]["max_replicas"] == 1
    assert "| SupportIngress | ingress | autoscaled | 1 | 2 | 1 |" in metadata["autoscaling"].value
    # Serve runs what the policy says (its defaults filled in).
    from unified_assets.serving.deploy import serve_details

    running = serve_details(world.dashboard)["applications"]["support"]["deployments"][SCALED]
    assert running["deployment_config"]["autoscaling_config"]["target_ongoing_requests"] == 1

    sensor = build_scaling_sensor()
    sensor_resources = {"serving_target": world.resources["serving_target"]}
    first, cursor = _tick(sensor, world.instance, sensor_resources, None)
    assert "baseline taken" in first and f"{SCALED} 1" in first
    again, cursor = _tick(sensor, world.instance, sensor_resources, cursor)
    assert "replicas unchanged" in again and not _observations(world.instance)

    stop = threading.Event()
    answered: list[int] = []

    def burst() -> None:
        while not stop.is_set():
            status, _ = world.ask({"customer_id": 3, "message": "where is my refund?"})
            answered.append(status)

    threads = [threading.Thread(target=burst, daemon=True) for _ in range(BURST_THREADS)]
    for thread in threads:
        thread.start()

    def until(direction: str) -> dict:
        nonlocal cursor
        deadline = time.monotonic() + WAIT_S
        while True:
            _, cursor = _tick(sensor, world.instance, sensor_resources, cursor)
            seen = [o for o in _observations(world.instance)
                    if o["deployment"] == SCALED and o["direction"] == direction]
            if seen:
                return seen[0]
            assert time.monotonic() < deadline, (
                f"{SCALED} did not scale {direction} within {WAIT_S}s: {_serve_state(world)}, "
                f"{len(answered)} requests answered")
            time.sleep(0.25)

    try:
        up = until("up")
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=60)
    # Answers (a loaded machine may answer some with 503 retry, as the policy says).
    assert answered.count(200) > len(answered) / 2, sorted(set(answered))
    down = until("down")

    assert (up["replicas_before"], up["replicas_after"]) == (1, 2)
    assert (down["replicas_before"], down["replicas_after"]) == (2, 1)
    assert up["target_replicas"] == 2 and up["target_ongoing_requests"] == 1
    assert (up["min_replicas"], up["max_replicas"]) == (1, 2)
    assert "scaled up 1 -> 2" in up["reason"] and "above the target 1" in up["reason"]
    assert "scaled down 2 -> 1" in down["reason"] and "below the target" in down["reason"]
    # The traffic that caused it, from the request audit.
    assert up["requests_last_minute"] > 0 and up["p99_latency_ms"] >= up["p50_latency_ms"] > 0
    assert down["requests_last_minute"] > 0
    assert up["replica_started_at"] > 0
    # Each change once, and only the ingress moved (the others are pinned at one replica).
    _, cursor = _tick(sensor, world.instance, sensor_resources, cursor)
    observed = [(o["deployment"], o["direction"]) for o in _observations(world.instance)]
    assert observed == [(SCALED, "up"), (SCALED, "down")], observed
    assert json.loads(cursor)["replicas"] == dict.fromkeys(
        ("SupportIngress", "Classifier", "Retriever", "Explainer", "FraudModel"), 1)


def test_the_sensor_skips_saying_why_until_serve_answers(tmp_path: Path):
    from tests.ray.conftest import free_port
    from unified_assets.assets.serving import SERVING_KEY, build_scaling_sensor
    from unified_assets.serving.resource import ServingTarget

    sensor = build_scaling_sensor()
    resources = {"serving_target": ServingTarget(home=str(tmp_path))}
    with dg.instance_for_test() as instance:
        never, _ = _tick(sensor, instance, resources, None)
        assert "never deployed" in never
        dashboard = f"http://127.0.0.1:{free_port()}"  # nothing listens there
        instance.report_runless_asset_event(dg.AssetMaterialization(
            SERVING_KEY, metadata={"ray_dashboard": dg.MetadataValue.url(dashboard)}))
        down, cursor = _tick(sensor, instance, resources, None)
        assert f"Serve's state at {dashboard} could not be read" in down
        assert cursor is None


def test_traffic_figures_come_from_the_audits_last_minute(tmp_path: Path):
    from datetime import UTC, datetime

    from unified_assets.serving.audit import append_record
    from unified_assets.serving.scaling import traffic

    now = time.time()
    audit = tmp_path / "audit.jsonl"
    assert traffic(audit, now)["requests_last_minute"] == 0
    for ago, latency in [(120, 5000.0), *[(i / 2, float(10 * (i + 1))) for i in range(100)]]:
        append_record(audit, {"at": datetime.fromtimestamp(now - ago, UTC).isoformat(),
                              "latency_ms": latency})
    with audit.open("a") as handle:
        handle.write('{"torn": ')
    figures = traffic(audit, now)
    assert figures == {"requests_last_minute": 100, "requests_per_s": round(100 / 60, 3),
                       "p50_latency_ms": 500.0, "p99_latency_ms": 990.0}


def test_the_serve_config_carries_the_policys_autoscaling_unless_a_part_is_pinned():
    from ray.serve.schema import ServeDeploySchema

    from tests.serving.test_serving_parts import GPU_NODE, HEAD
    from unified_assets.placement.policy import DEFAULT_POLICY
    from unified_assets.placement.snapshot import RayCapacity
    from unified_assets.policy import load_policy
    from unified_assets.serving.deploy import ModelRef, ServingPlan, place_parts, serve_config
    from unified_assets.serving.profiles import PARTS

    rules = load_policy().serving.rules()
    ref = ModelRef("m", "3", "sqlite:///x.db")
    plan = ServingPlan(fraud_model=ref, intent_model=ref, numeric=["amount"], categorical=[],
                       audit_path="/tmp/a.jsonl", decisions_url=None, replicas={"explain": 1},
                       autoscaling={part: rules[name].autoscaling_config()
                                    for part, (name, _, _) in PARTS.items()})
    capacity = RayCapacity(nodes=(HEAD, GPU_NODE))
    config = serve_config(plan, place_parts(capacity, DEFAULT_POLICY), capacity, DEFAULT_POLICY)
    ServeDeploySchema.model_validate(config)  # what Serve's REST API accepts
    deployments = {d["name"]: d for app in config["applications"] for d in app["deployments"]}
    assert deployments["Explainer"]["num_replicas"] == 1
    assert "autoscaling_config" not in deployments["Explainer"]
    for name in ("SupportIngress", "Classifier", "Retriever", "FraudModel"):
        assert deployments[name]["autoscaling_config"] == rules[name].autoscaling_config()
        assert "num_replicas" not in deployments[name]
    ingress = deployments["SupportIngress"]["user_config"]
    assert ingress["replicas"] == {"ingress": 1, "classify": 1, "retrieve": 1, "explain": 1,
                                   "fraud": 1}


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
