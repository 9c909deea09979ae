"""The pieces of the support workflow without a cluster: request validation, the decision
rules, per-request placement under each policy rule, the Serve config each part's replicas
ask Ray for, cases under the approval rules, the generated messages and the store."""

from __future__ import annotations

import pytest

from unified_assets.placement.policy import DEFAULT_POLICY, PlacementPolicy, ProfileRule
from unified_assets.placement.snapshot import RayCapacity, RayNode
from unified_assets.serving.decide import (
    ANSWER,
    ESCALATE,
    RETRY,
    BadRequest,
    FraudCheck,
    decide,
    parse_request,
)
from unified_assets.serving.profiles import MAX_ONGOING_REQUESTS, ServingRules
from unified_assets.serving.routing import ESCALATE as PLAN_ESCALATE
from unified_assets.serving.routing import TWIN, WAIT, LiveView, plan_request

RULES = ServingRules()
GPU_NODE = RayNode("gpu-node-1", "gpu", alive=True, gpus_total=1, gpus_free=1, cpus_total=2)
HEAD = RayNode("head-node-1", "(no pool label)", alive=True, cpus_total=4, cpus_free=4,
               is_head=True)
CUSTOMER = {"customer_id": 7, "refunds": [], "transactions": [
    {"transaction_id": "t1", "status": "approved", "amount": 10.0},
    {"transaction_id": "t2", "status": "declined", "amount": 99.0}]}


def test_parse_request_accepts_a_numeric_string_id_and_trims_the_message():
    assert parse_request(b'{"customer_id": "42", "message": "  refund?  "}', RULES) == (42, "refund?")
    with pytest.raises(BadRequest) as bad:
        parse_request(b'{"customer_id": true, "message": "hi"}', RULES)
    assert bad.value.status == 422


def _classified(intent: str, confidence: float = 0.95) -> dict:
    return {"intent": intent, "intents": [intent], "confidence": confidence}


@pytest.mark.parametrize("classified, fraud, problem, decision, says", [
    (_classified("refund_status"), FraudCheck({"t1": 0.1}, "m v1", 1), None, ANSWER, "answered"),
    (_classified("refund_status", 0.3), FraudCheck({"t1": 0.1}, "m v1", 1), None, ESCALATE,
     "intent unclear"),
    (_classified("refund_status"), FraudCheck({"t1": 0.9}, "m v1", 1), None, ESCALATE,
     "approved payment t1 scored 0.90"),
    # A declined payment scoring high is the decline working, not a reason to escalate.
    (_classified("decline_reason"), FraudCheck({"t2": 0.95}, "m v1", 1), None, ANSWER, "answered"),
    (_classified("refund_status"), FraudCheck(attempts=3, errors=("HTTP 500",)), None, ESCALATE,
     "after 3 attempt(s): HTTP 500"),
    (_classified("decline_reason"), FraudCheck({"t1": 0.1}, "m v1", 1), (RETRY, "explainer: waited"),
     RETRY, "waited"),
    (_classified("fraud_report"), FraudCheck({"t1": 0.1}, "m v1", 1), None, ESCALATE,
     "escalate_intents"),
])
def test_decisions(classified, fraud, problem, decision, says):
    outcome = decide(classified, CUSTOMER, fraud, "because", problem, RULES)
    assert outcome.decision == decision and says in outcome.reason


def test_a_fraud_service_that_stays_down_may_be_a_retry_by_rule():
    rules = ServingRules(on_fraud_unavailable="retry")
    outcome = decide(_classified("refund_status"), CUSTOMER, FraudCheck(attempts=3), None, None,
                     rules)
    assert outcome.decision == RETRY


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_the_fraud_breaker_opens_after_failures_in_a_row_then_one_request_probes():
    from unified_assets.serving.breaker import Breaker

    clock = _Clock()
    breaker = Breaker(failures=3, open_s=10, clock=clock)
    for _ in range(2):
        assert breaker.admit() is None
        breaker.record(False, "HTTP 500")
    assert breaker.admit() is None
    breaker.record(True)  # a success in between: the run starts again
    for _ in range(3):
        assert breaker.admit() is None
        breaker.record(False, "ReadTimeout")
    assert breaker.admit() == pytest.approx(10)  # open: not called
    assert "3 request(s) in a row" in breaker.why_open(10) and "ReadTimeout" in breaker.why_open(10)
    clock.now += 10
    assert breaker.admit() is None  # one probe
    assert breaker.admit() == pytest.approx(1.0)  # the others wait for it
    clock.now += 10
    assert breaker.admit() is None  # a probe that never reported (cancelled) gives way
    breaker.record(False, "HTTP 503")
    assert breaker.admit() == pytest.approx(10)  # open again, from now
    clock.now += 10
    assert breaker.admit() is None
    breaker.record(True)
    assert breaker.admit() is None and breaker.failed == 0
    never = Breaker(failures=0, open_s=10, clock=clock)
    for _ in range(20):
        never.record(False, "HTTP 500")
    assert never.admit() is None


def test_an_open_fraud_breaker_is_a_retry_unless_a_person_handles_the_intent_anyway():
    # The default on_fraud_unavailable (escalate) is for a request that tried the service;
    # one the breaker kept from it is asked to come back, not made a case.
    open_check = FraudCheck(attempts=0, errors=("circuit open: ...",), open_for_s=7.2)
    outcome = decide(_classified("refund_status"), CUSTOMER, open_check, None, None, RULES)
    assert outcome.decision == RETRY and "circuit open" in outcome.reason
    reported = decide(_classified("fraud_report"), CUSTOMER, open_check, None, None, RULES)
    assert reported.decision == ESCALATE and "circuit open" in reported.reason
    assert "escalate_intents" in reported.reason


DEPLOYED = {"classify": {"target": "cpu", "where": "cpu", "reason": "cpu profile",
                         "rule": "profiles.cpu-light"},
            "retrieve": {"target": "cpu", "where": "cpu", "reason": "cpu profile",
                         "rule": "profiles.cpu-light"},
            "explain": {"target": "gpu", "where": "ray pool gpu", "reason": "GPU free",
                        "rule": "profiles.gpu-training"},
            "fraud": {"target": "cpu", "where": "cpu", "reason": "cpu profile",
                      "rule": "profiles.cpu-light"}}
ALL_UP = {"Classifier": 1, "Retriever": 1, "Explainer": 1, "FraudModel": 1, "SupportIngress": 1}


def _policy(on_unavailable: str) -> PlacementPolicy:
    rule = ProfileRule(targets=("gpu", "cpu") if on_unavailable == "degrade_to_cpu" else ("gpu",),
                       on_unavailable=on_unavailable)
    written = DEFAULT_POLICY.model_dump(exclude={"profiles": {"serve-cpu", "serve-gpu"}})
    return PlacementPolicy.model_validate({**written, "profiles": {**written["profiles"],
                                                                   "gpu-training": rule}})


@pytest.mark.parametrize("rule, action, says", [
    ("degrade_to_cpu", TWIN, "degraded to cpu"),
    ("wait", WAIT, "waits by policy"),
    ("fail_and_escalate", PLAN_ESCALATE, "fail_and_escalate"),
])
def test_an_explainer_without_replicas_follows_its_rule(rule, action, says):
    gone = LiveView({**ALL_UP, "Explainer": 0}, {"Explainer": 1}, (HEAD, GPU_NODE))
    explain = plan_request(DEPLOYED, gone, _policy(rule))["explain"]
    assert explain.action == action and says in explain.reason, explain
    assert "explainer: 0 of 1 replica(s) running" in explain.reason
    up = plan_request(DEPLOYED, LiveView(ALL_UP, {}, (HEAD, GPU_NODE)), _policy(rule))["explain"]
    assert (up.action, up.target) == ("call", "gpu")


@pytest.mark.parametrize("rule, action, says", [
    ("degrade_to_cpu", TWIN, "degraded to cpu"),
    ("wait", WAIT, "waits by policy"),
    ("fail_and_escalate", PLAN_ESCALATE, "fail_and_escalate"),
])
def test_a_saturated_explainer_follows_its_rule_as_if_gone(rule, action, says):
    """As many explanations in flight as the running replicas take at once: the next one
    would queue behind them, so the policy decides where it runs."""
    two = LiveView({**ALL_UP, "Explainer": 2}, {"Explainer": 2}, (HEAD, GPU_NODE))
    room = 2 * MAX_ONGOING_REQUESTS["Explainer"]
    below = plan_request(DEPLOYED, two, _policy(rule), explain_in_flight=room - 1)["explain"]
    assert (below.action, below.target) == ("call", "gpu"), below
    full = plan_request(DEPLOYED, two, _policy(rule), explain_in_flight=room)["explain"]
    assert full.action == action and says in full.reason, full
    assert f"explainer saturated: {room} explanations in flight for 2 replica(s)" in full.reason


def test_a_cpu_part_without_replicas_waits_within_the_budget():
    plan = plan_request(DEPLOYED, LiveView({**ALL_UP, "Retriever": 0}), _policy("degrade_to_cpu"))
    assert plan["retrieve"].action == WAIT and plan["classify"].action == "call"


def test_each_part_asks_ray_for_its_profile_and_a_degraded_explainer_for_no_gpu():
    from unified_assets.serving.deploy import ModelRef, ServingPlan, place_parts, serve_config

    ref = ModelRef("m", "3", "sqlite:///x.db")
    plan = ServingPlan(fraud_model=ref, intent_model=ref, numeric=["amount"], categorical=[],
                       audit_path="/tmp/a.jsonl", decisions_url="sqlite:///d.db")

    def options(capacity: RayCapacity) -> dict:
        placed = place_parts(capacity, DEFAULT_POLICY)
        config = serve_config(plan, placed, capacity, DEFAULT_POLICY)
        return {d["name"]: d["ray_actor_options"] for app in config["applications"]
                for d in app["deployments"]}

    with_gpu = options(RayCapacity(nodes=(HEAD, GPU_NODE)))
    assert with_gpu["Explainer"]["num_gpus"] == 1
    assert with_gpu["Explainer"]["label_selector"] == {"unified-ai/pool": "gpu"}
    for name in ("SupportIngress", "Classifier", "Retriever", "FraudModel"):
        assert with_gpu[name]["num_gpus"] == 0 and with_gpu[name]["num_cpus"] == 0.25
        assert with_gpu[name]["label_selector"] == {"unified-ai/pool": "!gpu"}
    without = options(RayCapacity(nodes=(HEAD,)))
    assert without["Explainer"]["num_gpus"] == 0
    assert without["Explainer"]["label_selector"] == {"unified-ai/pool": "!gpu"}
    # One GPU machine, all of it the GPU pool: CPU parts must not select themselves away.
    alone = options(RayCapacity(nodes=(GPU_NODE,)))
    assert "label_selector" not in alone["Classifier"] and alone["Explainer"]["num_gpus"] == 1


def test_cases_are_resolved_by_an_approver_once_and_signed_when_required(tmp_path):
    from resources.decision_store import DecisionStore
    from tests.policies import write_policy
    from unified_assets.policy import load_policy
    from unified_assets.services.identity import new_key_pair, sign
    from unified_assets.serving.cases import (
        CASES_MODEL,
        RESOLVE_ACTION,
        CaseRefused,
        list_cases,
        open_case,
        resolve_case,
    )

    store = DecisionStore(url=f"sqlite:///{tmp_path / 'decisions.db'}")
    case = open_case(store, request_id="abc", reason="fraud report", details={"customer_id": 3})
    pem, public = new_key_pair()
    keys = dict.fromkeys(("alice", "bob", "ops", "risk-officer"), public)
    signed = load_policy(write_policy(tmp_path, {"approval": {
        "keys": keys, "require_signature": True}}))
    with pytest.raises(CaseRefused, match="not signed"):
        resolve_case(store, signed, case, "alice", "done")
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    token = sign(load_pem_private_key(pem, None), action=RESOLVE_ACTION, model=CASES_MODEL,
                 version=case, actor="alice", reason="card blocked")
    with pytest.raises(CaseRefused, match="signed for reason"):
        resolve_case(store, signed, case, "alice", "something else", token=token)
    closed = resolve_case(store, signed, case, "alice", "card blocked", token=token)
    assert (closed.status, closed.resolved_by) == ("resolved", "alice")
    with pytest.raises(CaseRefused, match="already resolved"):
        resolve_case(store, signed, case, "alice", "card blocked", token=token)
    assert [c.status for c in list_cases(store)] == ["resolved"]
    # Cases never look like approvals to the approval sensor (kind `decision` from the CLI).
    assert not [e for e in store.events() if e["kind"] == "decision"]


def test_messages_and_store_are_the_same_for_the_same_seed():
    from unified_assets.serving.customers import StoreSpec, build_store
    from unified_assets.serving.messages import generate_messages

    assert generate_messages(20, 5, seed=3) == generate_messages(20, 5, seed=3)
    assert generate_messages(20, 5, seed=3) != generate_messages(20, 5, seed=4)
    spec = StoreSpec(customers=20)
    first, again = build_store(spec).lookup(11), build_store(spec).lookup(11)
    assert first == again and len(first["transactions"]) == 8
    assert build_store(spec).lookup(21) is None


def test_the_rayservice_manifest_deploys_what_serving_deploys():
    """deploy/ray/rayservice.yaml's serveConfigV2 is a valid Serve config with the same
    applications, routes, import paths, deployments, resource requests, user_config keys and
    autoscaling as the one the `serving` asset sends with the shipped policy (for a head node
    and a GPU worker)."""
    from pathlib import Path

    import yaml
    from ray.serve.schema import ServeDeploySchema

    from unified_assets.policy import load_policy
    from unified_assets.serving.deploy import ModelRef, ServingPlan, place_parts, serve_config
    from unified_assets.serving.profiles import PARTS

    manifest = yaml.safe_load((Path(__file__).parents[2] / "deploy/ray/rayservice.yaml").read_text())
    assert manifest["kind"] == "RayService"
    shipped = yaml.safe_load(manifest["spec"]["serveConfigV2"])
    ServeDeploySchema.model_validate(shipped)
    ref = ModelRef("payments-risk", "1", "http://mlflow:5000")
    # The shipped policy's autoscaling, as the `serving` asset puts it in its plan.
    scaling = load_policy().serving.rules()
    plan = ServingPlan(fraud_model=ref, intent_model=ref, numeric=["amount"], categorical=[],
                       audit_path="/a.jsonl", decisions_url=None, http_host="0.0.0.0",
                       autoscaling={part: scaling[name].autoscaling_config()
                                    for part, (name, _, _) in PARTS.items()})
    capacity = RayCapacity(nodes=(HEAD, GPU_NODE))
    ours = serve_config(plan, place_parts(capacity, DEFAULT_POLICY), capacity, DEFAULT_POLICY)

    def shape(config: dict) -> dict:
        return {app["name"]: (app["route_prefix"], app["import_path"], {
            d["name"]: (d["ray_actor_options"], sorted(set(d["user_config"]) - {"placement_policy"}),
                        d.get("num_replicas"), d.get("autoscaling_config"))
            for d in app["deployments"]}) for app in config["applications"]}

    assert shape(shipped) == shape(ours)
    # The ingress's rules are written out in full, each at the shipped value.
    (ingress,) = [d for app in shipped["applications"] for d in app["deployments"]
                  if d["name"] == "SupportIngress"]
    written = ingress["user_config"]["rules"]
    assert set(written) == set(ServingRules.model_fields), set(ServingRules.model_fields) ^ set(written)
    assert ServingRules(**written) == ServingRules()
    assert shipped["http_options"]["port"] == ours["http_options"]["port"]
    gpu_pool = manifest["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["rayStartParams"]["labels"]
    assert gpu_pool == "unified-ai/pool=gpu"


def test_every_serving_node_runs_serve_in_the_products_mode():
    """Serve's throughput mode (deploy.SERVE_NODE_ENV) is set wherever serving nodes start:
    each RayService pod, scripts/ray_cluster.sh and the on-demand local instance."""
    import re
    from pathlib import Path

    import yaml

    from unified_assets.serving import deploy

    root = Path(__file__).parents[2]
    assert deploy.SERVE_NODE_ENV == {"RAY_SERVE_THROUGHPUT_OPTIMIZED": "1"}
    cluster = yaml.safe_load((root / "deploy/ray/rayservice.yaml").read_text())["spec"][
        "rayClusterConfig"]
    pods = [cluster["headGroupSpec"]] + cluster["workerGroupSpecs"]
    for pod in pods:
        for container in pod["template"]["spec"]["containers"]:
            env = {item["name"]: item.get("value") for item in container.get("env") or []}
            assert {k: env.get(k) for k in deploy.SERVE_NODE_ENV} == deploy.SERVE_NODE_ENV, \
                container["name"]
    script = (root / "scripts/ray_cluster.sh").read_text()
    for name, value in deploy.SERVE_NODE_ENV.items():
        assert re.search(rf"^export {name}=\$\{{{name}:-{value}\}}$", script, re.M), name
    local = deploy.local_ray_env({"PATH": "/bin"})
    assert local["RAY_SERVE_THROUGHPUT_OPTIMIZED"] == "1" and local["PATH"] == "/bin"
    assert deploy.local_ray_env({"RAY_SERVE_THROUGHPUT_OPTIMIZED": "0"})[
        "RAY_SERVE_THROUGHPUT_OPTIMIZED"] == "0"  # the user's choice wins


@pytest.mark.parametrize(("feature", "value", "shows"), [
    ("amount", 18.98, "$18.98"), ("avg_amount_30d", 18.92, "$18.92"),
    ("account_age_days", 331, "331 days"), ("device_trust_score", 0.91, "0.91"),
    ("merchant_category", "grocery", "grocery"), ("distance_from_home_km", 3.0, "3 km"),
])
def test_an_explanation_states_the_value_not_a_judgement_the_model_did_not_make(
        feature, value, shows):
    """Found: "the account is young (331 days)" and "it differed from your usual spending
    ($18.92 on average)" about an $18.98 payment. An attribution says a feature raised the
    score against the reference, not that its value is young, high or unusual."""
    from unified_assets.serving.explain import reason

    said = reason(feature, value, {"amount": 18.98, "avg_amount_30d": 18.92})
    assert shows in said, said
    for judgement in ("young", "high", "low", "differed", "usual", "more fraud"):
        assert judgement not in said, said
