"""The support workflow over a backlog (one asset per part) and the daily `request_audit`,
materialized in process against a real MLflow sqlite store, a real decision store and real
files; no Ray. A backlog request gets the decision the online functions give it (the same
intent model, store, explainer, fraud model and rules); a bad line is refused by file and
line while the rest are decided; the audit summary is checked against a known audit file."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dagster as dg
import pytest

from tests.serving.conftest import calm_customers
from unified_assets.settings import Settings

MODEL = "payments-risk"
INTENT_CONFIG = {"per_intent": 150, "pairs": 60}  # small and quick, as tests/serving/conftest
TRAIN_ROWS = 1500


@dataclass
class World:
    settings: Settings
    instance: dg.DagsterInstance
    resources: dict[str, Any]
    champion: str
    refund: int  # a customer with a refund, no declined payment, calm approved payments
    decline: int  # a customer with a declined payment and no refund, calm approved payments

    @property
    def backlog_folder(self) -> Path:
        return self.resources["serving_target"].backlog_folder

    def materialize(self, key: str, only: str | None = None) -> dg.ExecuteInProcessResult:
        """The backlog's assets for partition `key` (`only`: that asset, from stored inputs)."""
        from unified_assets.assets.backlog import BACKLOG_ASSETS, BACKLOGS

        if key not in self.instance.get_dynamic_partitions(BACKLOGS.name):
            self.instance.add_dynamic_partitions(BACKLOGS.name, [key])
        return dg.materialize(BACKLOG_ASSETS, partition_key=key, resources=self.resources,
                              instance=self.instance, raise_on_error=False,
                              selection=[only] if only else None)


def _champion(settings: Settings, resources: dict) -> str:
    """One real fraud-model version (the trees), approved and promoted through the ledger."""
    from unified_assets.ml.generator import TARGET, generate_batch
    from unified_assets.ml.sklearn_model import SklearnParams, SklearnRiskModel, fit_sklearn
    from unified_assets.services.champion import ChampionLedger

    spec = resources["dataset"].spec
    numeric, categorical = spec.numeric_features, spec.categorical_features
    trees = fit_sklearn(generate_batch(0, TRAIN_ROWS), numeric, categorical, TARGET,
                        SklearnParams(max_iter=30))
    registry, store = resources["mlflow_registry"], resources["decisions"]
    version = registry.log_candidate(
        model_name=MODEL, family="sklearn", flavor="pyfunc",
        model=SklearnRiskModel(trees.pipeline, trees.levels, numeric, categorical), params={},
        metrics={}, tags={}, pip_requirements=["pandas"]).version
    store.append_event(model_name=MODEL, version=version, kind="decision", decision="approve",
                       actor="alice", reason="tests: gates passed")
    ChampionLedger(store, registry).promote(MODEL, version, "alice", "first",
                                            evaluated_against=None)
    return version


def _calm_customers(settings: Settings, resources: dict, version: str) -> tuple[int, int]:
    """A refund customer and a decline customer whose approved payments score low."""
    from unified_assets.serving.customers import build_store
    from unified_assets.serving.explain import load_fraud_model

    spec = resources["dataset"].spec
    model = load_fraud_model(MODEL, version, settings.mlflow_tracking_uri,
                             spec.numeric_features, spec.categorical_features)
    return calm_customers(model, build_store())


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, mlflow_db_template: Path) -> Iterator[World]:
    from unified_assets.assets.serving import support_intent_model
    from unified_assets.definitions import build_definitions

    home = tmp_path_factory.mktemp("backlog") / "home"
    home.mkdir()
    shutil.copy(mlflow_db_template, home / "mlflow.db")
    settings = Settings(deployment="local", home=home, dataset_spec=None)
    resources = dict(build_definitions(settings).resources)
    with dg.instance_for_test() as instance:
        champion = _champion(settings, resources)
        assert dg.materialize([support_intent_model], resources=resources, instance=instance,
                              run_config={"ops": {"support_intent_model": {
                                  "config": INTENT_CONFIG}}}).success
        refund, decline = _calm_customers(settings, resources, champion)
        yield World(settings, instance, resources, champion, refund, decline)


def _online(world: World, questions: dict[str, tuple[int, str]]) -> dict[str, dict]:
    """What the online path decides for each request, from the functions its Serve
    deployments call, one request at a time (app.py: Classifier, Retriever, ExplainerCore,
    FraudModel, SupportIngress._workflow)."""
    from unified_assets.serving.customers import build_store
    from unified_assets.serving.decide import FraudCheck, decide, explain_target
    from unified_assets.serving.explain import explain_payments, load_fraud_model, payment_scores
    from unified_assets.serving.intent_model import MODEL_NAME, load_intent_model
    from unified_assets.serving.profiles import ServingRules

    event = world.instance.get_latest_materialization_event(dg.AssetKey("support_intent_model"))
    version = str(event.asset_materialization.metadata["model_version"].value)
    uri = world.settings.mlflow_tracking_uri
    intent_model, _ = load_intent_model(MODEL_NAME, version, uri)
    rules, store = ServingRules(), build_store()
    spec = world.resources["dataset"].spec
    fraud_model = load_fraud_model(MODEL, world.champion, uri, spec.numeric_features,
                                   spec.categorical_features)
    out = {}
    for name, (customer_id, message) in questions.items():
        intent = intent_model.classify(message)
        customer = store.lookup(customer_id, rules.recent_transactions)
        target = explain_target(intent["intents"], customer)
        explanation = None
        if target is not None:
            explanation = explain_payments(fraud_model, [target], store.frame, False)["texts"][0]
        fraud = FraudCheck(payment_scores(fraud_model, customer["transactions"]),
                           fraud_model.label, 1)
        outcome = decide(intent, customer, fraud, explanation, None, rules)
        out[name] = {"intents": intent["intents"], "decision": outcome.decision,
                     "reason": outcome.reason, "answer": outcome.answer,
                     "explanation": explanation}
    return out


def _metadata(result: dg.ExecuteInProcessResult, asset: str) -> dict[str, Any]:
    (materialization,) = result.asset_materializations_for_node(asset)
    return {k: v.value for k, v in materialization.metadata.items()}


def _lines(path: Path, lines: list[Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"".join((line if isinstance(line, bytes) else json.dumps(line).encode())
                              + b"\n" for line in lines))
    return path


def test_each_intent_through_the_backlog_decides_as_online_and_bad_lines_are_refused(
        world: World):
    from unified_assets.serving.cases import list_cases

    questions = {
        "refund": (world.refund, "Where is my refund?"),
        "decline": (world.decline, "why was my card declined yesterday?"),
        "fraud": (world.decline, "someone used my card, I did not make this payment"),
        "other": (world.refund, "how do I change my address"),
        "both": (world.decline, "where is my refund and why was my payment declined?"),
    }
    good = [{"customer_id": c, "message": m} for c, m in questions.values()]
    path = _lines(world.backlog_folder / "replay-1.jsonl", [
        good[0], good[1],
        b'{"customer_id": 42, "message": ',                        # line 3: not JSON
        {**good[2], "request_id": "fraud-1"},                      # line 4: its own id
        {"customer_id": 42, "message": "hi", "admin": True},       # line 5: unknown field
        good[3],
        {"customer_id": 999_999, "message": "where is my refund"},  # line 7: unknown customer
        {"customer_id": "42", "message": "   "},                   # line 8: empty message
        {**good[1], "request_id": "fraud-1"},                      # line 9: id used on line 4
        good[4],
    ])
    cases_before = len(list_cases(world.resources["decisions"]))
    result = world.materialize("replay-1")
    assert result.success

    backlog = _metadata(result, "support_backlog")
    assert (backlog["requests"], backlog["refused_lines"], backlog["lines"]) == (6, 4, 10)
    for line, status, says in ((3, 400, "not valid JSON"), (5, 422, "unknown field(s) admin"),
                               (8, 422, "message is empty"), (9, 422, "already on line 4")):
        assert f"| {path} | {line} | {status} | " in backlog["refused"], backlog["refused"]
        assert says in backlog["refused"]

    decided = {r["line"]: r for r in result.output_for_node("backlog_decided")}
    assert sorted(decided) == list(range(1, 11))  # every line has its outcome
    online_decisions = _online(world, questions)
    for line, name in ((1, "refund"), (2, "decline"), (4, "fraud"), (6, "other"), (10, "both")):
        record, online = decided[line], online_decisions[name]
        assert record["intents"] == online["intents"], (name, record)
        for key in ("reason", "answer", "explanation"):
            assert record[key] == online[key], (name, key)
        assert record["outcome"] == online["decision"], name
    assert (decided[1]["intent"], decided[1]["outcome"]) == ("refund_status", "answer")
    assert (decided[2]["intent"], decided[2]["outcome"]) == ("decline_reason", "answer")
    assert "The main reasons:" in decided[2]["explanation"]
    assert decided[2]["versions"]["explain"] == decided[2]["versions"]["fraud"] == \
        f"{MODEL} v{world.champion}"
    assert (decided[4]["intent"], decided[4]["outcome"]) == ("fraud_report", "escalate")
    assert decided[4]["request_id"] == "fraud-1" and decided[4]["case_id"] == "case-fraud-1"
    assert (decided[6]["intent"], decided[6]["outcome"]) == ("other", "escalate")
    assert set(decided[10]["intents"]) == {"refund_status", "decline_reason"}
    assert (decided[7]["outcome"], decided[7]["status"]) == ("rejected", 404)
    assert "unknown customer 999999" in decided[7]["reason"]
    for line in (3, 5, 7, 8, 9):
        assert decided[line]["outcome"] == "rejected" and decided[line]["case_id"] is None

    # Escalations are cases, as online, with where they came from.
    cases = {c.case_id: c for c in list_cases(world.resources["decisions"], "open")}
    assert len(cases) == cases_before + 2
    fraud_case = cases["case-fraud-1"]
    assert fraud_case.customer_id == world.decline and "escalate_intents" in fraud_case.reason
    assert (fraud_case.details["backlog"], fraud_case.details["line"]) == (str(path), 4)
    assert fraud_case.details["model_versions"]["fraud"] == f"{MODEL} v{world.champion}"

    summary = _metadata(result, "backlog_decided")
    assert (summary["outcome_answer"], summary["outcome_escalate"],
            summary["outcome_rejected"]) == (3, 2, 5)
    assert summary["escalation_rate"] == pytest.approx(0.4)
    assert summary["cases_opened"] == 2
    # `requests` means the same on both assets: the lines that were requests to decide.
    assert (summary["lines"], summary["requests"]) == (10, 6)
    answers = [json.loads(line) for line in Path(summary["answers_file"]).read_text().splitlines()]
    assert [a["line"] for a in answers] == list(range(1, 11))
    # A refused line keeps whose it was, when that could be read.
    assert [answers[i - 1]["customer_id"] for i in (3, 5, 8, 9)] == [None, 42, 42, world.decline]

    # explain: the GPU part, placed by the planner; no CUDA here, so CPU, and it says why.
    explained = _metadata(result, "backlog_explained")
    assert explained["explain_device"] == "cpu" and explained["explain_method"] == "occlusion"
    assert explained["placement_target"] == "cpu" and explained["requests_explained"] == 3
    assert explained["explain_where"].startswith("placed on cpu") and \
        explained["placement_reason"] in explained["explain_where"]
    assert _metadata(result, "backlog_classified")["intent_model_version"].startswith(
        "support-intent v")
    assert _metadata(result, "backlog_retrieved")["unknown"] == "999999"

    # Decided again (a replay of the same file): no case is opened twice.
    again = world.materialize("replay-1", only="backlog_decided")
    assert again.success
    assert _metadata(again, "backlog_decided")["cases_already_open"] == 2
    assert len(list_cases(world.resources["decisions"])) == cases_before + 2


def test_an_empty_backlog_is_decided_as_no_requests(world: World):
    _lines(world.backlog_folder / "empty.jsonl", [b"", b"   "])
    result = world.materialize("empty")
    assert result.success
    summary = _metadata(result, "backlog_decided")
    assert (summary["lines"], summary["requests"], summary["cases_opened"]) == (0, 0, 0)
    assert summary["summary"] == "empty.jsonl: no requests (no line to decide); 0 case(s) opened"


def test_a_request_id_another_backlog_used_gets_its_own_case(world: World):
    """Found by a new user: a fraud report whose own request_id an earlier backlog's line had
    used was counted as that line's case (another customer's); no case held it."""
    from unified_assets.serving.cases import list_cases

    fraud = "someone used my card, I did not make this payment"
    _lines(world.backlog_folder / "ids-a.jsonl",
           [{"customer_id": world.refund, "message": fraud, "request_id": "shared-7"}])
    _lines(world.backlog_folder / "ids-b.jsonl",
           [{"customer_id": world.decline, "message": fraud, "request_id": "shared-7"}])
    first, second = world.materialize("ids-a"), world.materialize("ids-b")
    assert first.success and second.success
    (a,) = first.output_for_node("backlog_decided")
    (b,) = second.output_for_node("backlog_decided")
    assert a["outcome"] == b["outcome"] == "escalate"
    assert a["case_id"] == "case-shared-7" and b["case_id"] == "case-shared-7@ids-b"
    cases = {c.case_id: c for c in list_cases(world.resources["decisions"])}
    assert cases["case-shared-7"].customer_id == world.refund
    assert cases["case-shared-7@ids-b"].customer_id == world.decline
    # Each run again: the same two cases, none opened twice.
    again = world.materialize("ids-b", only="backlog_decided")
    assert again.output_for_node("backlog_decided")[0]["case_id"] == "case-shared-7@ids-b"
    assert _metadata(again, "backlog_decided")["cases_already_open"] == 1


def test_a_dropped_file_becomes_a_partition_and_a_run(tmp_path: Path, instance: dg.DagsterInstance):
    from unified_assets.assets.backlog import BACKLOGS, build_backlog_sensor
    from unified_assets.serving.resource import ServingTarget

    target = ServingTarget(home=str(tmp_path))
    sensor = build_backlog_sensor()

    def tick(cursor: str | None = None):
        context = dg.build_sensor_context(instance=instance, cursor=cursor,
                                          resources={"serving_target": target})
        return sensor(context)

    assert isinstance(tick(), dg.SkipReason)
    _lines(target.backlog_folder / "monday backlog.jsonl", [{"customer_id": 1, "message": "hi"}])
    (target.backlog_folder / "half.jsonl.partial").write_text("{")
    first = tick()
    (request,) = first.run_requests
    key = request.partition_key
    assert key.startswith("monday_backlog.")
    assert first.dynamic_partitions_requests[0].partition_keys == [key]
    assert request.tags["unified-ai/trigger"] == "new-backlog"
    instance.add_dynamic_partitions(BACKLOGS.name, [key])
    assert isinstance(tick(first.cursor), dg.SkipReason)
    # The file replaced by another: decided again, in the same partition.
    _lines(target.backlog_folder / "monday backlog.jsonl",
           [{"customer_id": 1, "message": "hi"}, {"customer_id": 2, "message": "refund?"}])
    again = tick(first.cursor)
    assert [r.partition_key for r in again.run_requests] == [key]
    assert again.run_requests[0].run_key != request.run_key
    assert not again.dynamic_partitions_requests


def _record(at: str, outcome: str, latency: float, status: int = 200, **extra: Any) -> dict:
    return {"request_id": f"r-{at}-{latency}", "at": at, "outcome": outcome, "status": status,
            "latency_ms": latency, "fallbacks": [], "reason": f"why {outcome}",
            "versions": {"intent": "support-intent v1", "fraud": "payments-risk v2"}, **extra}


def _audit_metadata(home: Path, day: str) -> dict[str, Any]:
    from unified_assets.assets.backlog import request_audit
    from unified_assets.serving.resource import ServingTarget

    result = dg.materialize([request_audit], partition_key=day,
                            resources={"serving_target": ServingTarget(home=str(home))})
    assert result.success
    return _metadata(result, "request_audit")


def test_request_audit_summarizes_a_day_and_names_a_malformed_line(tmp_path: Path):
    from unified_assets.serving.audit import BadLine, read_records

    day = "2026-11-30T"
    records = [
        _record(day + "00:00:01+00:00", "answer", 10),
        _record(day + "01:00:00+00:00", "answer", 20, fallbacks=["explain: degrade_to_cpu"]),
        _record(day + "02:00:00+00:00", "answer", 30),
        _record(day + "03:00:00+00:00", "escalate", 40, case_id="case-x",
                fallbacks=["fraud: 3 attempts"]),
        _record(day + "04:00:00+00:00", "escalate", 50,
                fallbacks=["explain: degrade_to_cpu", "fraud: 2 attempts"]),
        _record(day + "05:00:00+00:00", "retry", 60, status=503),
        _record(day + "06:00:00+01:00", "rejected", 70, status=422),  # 05:00 UTC
        _record(day + "23:59:59", "answer", 80,  # naive: UTC
                versions={"intent": "support-intent v2", "fraud": "payments-risk v2"}),
        _record("2026-11-29T23:59:59+00:00", "escalate", 5000),  # the day before
        _record("2026-12-01T00:00:00+00:00", "escalate", 5000),  # the day after
        _record("2026-12-01T00:30:00+01:00", "error", 90, status=500),  # 2026-11-30 23:30 UTC
    ]
    records.append(_record(day + "05:30:00+00:00", "shed", 1, status=503, versions={}))  # no work
    lines = [json.dumps(r) for r in records]
    lines.insert(4, '{"request_id": "torn", "at": "2026-11-30T04')  # line 5
    lines.insert(11, '{"request_id": "torn too", "at": "2026-12-01')  # line 12, after 12-01's
    lines.append(json.dumps({"outcome": "answer", "status": 200}))  # line 15: no time, no id
    audit = tmp_path / "serving" / "audit.jsonl"
    audit.parent.mkdir(parents=True)
    audit.write_text("\n".join(lines) + "\n")

    got = _audit_metadata(tmp_path, "2026-11-30")
    assert got["requests"] == 10 and got["decided"] == 7  # a shed request was not decided
    assert (got["outcome_answer"], got["outcome_escalate"], got["outcome_retry"],
            got["outcome_shed"], got["outcome_rejected"], got["outcome_error"]) == (
        4, 2, 1, 1, 1, 1)
    assert got["escalation_rate"] == pytest.approx(2 / 7, abs=1e-4)
    # nearest rank over 1, 10, 20, ..., 90 ms: p50 the 5th, p95 and p99 the 10th
    assert (got["p50_latency_ms"], got["p95_latency_ms"], got["p99_latency_ms"]) == (40, 90, 90)
    assert got["requests_with_fallback"] == 3
    assert (got["fallback_explain"], got["fallback_fraud"], got["fallback_classify"]) == (2, 2, 0)
    assert "| explain | degrade_to_cpu | 2 |" in got["fallbacks"]
    assert "| fraud | 3 attempts | 1 |" in got["fallbacks"]
    assert "| intent | support-intent v1 | 8 |" in got["model_versions"]
    assert "| intent | support-intent v2 | 1 |" in got["model_versions"]
    assert "| 422 | 1 |" in got["statuses"] and "| 200 | 6 |" in got["statuses"]
    assert "| 503 | 2 |" in got["statuses"]
    assert got["malformed_lines"] == 1 and got["malformed"].startswith(f"{audit}:5: ")
    assert got["day_complete"] is True and "10 request(s)" in got["summary"]
    assert "1 malformed line(s)" in got["summary"]
    # A line without a readable time is named by its line in the file, and belongs to the day
    # of the record before it (the audit is appended in time order): each day names only its
    # own, not every malformed line of the file again.
    assert (got["records_without_time"], got["without_time"]) == (1, f"line {len(lines)}")
    after = _audit_metadata(tmp_path, "2026-12-01")
    assert (after["requests"], after["malformed_lines"], after["records_without_time"]) == (1, 1, 0)
    assert after["malformed"].startswith(f"{audit}:12: ")
    before = _audit_metadata(tmp_path, "2026-11-29")
    assert (before["requests"], before["malformed_lines"]) == (1, 0)

    # read_records keeps its callers' behaviour (records only) and names bad lines on request.
    bad: list[BadLine] = []
    assert len(read_records(audit)) == len(records) + 1
    assert len(read_records(audit, last=2, bad=bad)) == 2
    assert [(b.line, b.path) for b in bad] == [(5, str(audit)), (12, str(audit))]


def test_request_audit_of_an_empty_day_is_zero_requests(tmp_path: Path):
    nothing = _audit_metadata(tmp_path, "2026-11-30")  # no audit file at all
    assert nothing["requests"] == 0 and "nothing was served on this host" in nothing["summary"]
    audit = tmp_path / "serving" / "audit.jsonl"
    audit.parent.mkdir(parents=True)
    audit.write_text(json.dumps(_record("2026-11-29T10:00:00+00:00", "answer", 10)) + "\n")
    empty = _audit_metadata(tmp_path, "2026-11-30")
    assert (empty["requests"], empty["decided"], empty["outcome_answer"],
            empty["malformed_lines"]) == (0, 0, 0, 0)
    assert empty["escalation_rate"] == "undefined" and empty["p50_latency_ms"] == "undefined"
    assert empty["summary"] == f"2026-11-30: no requests in {audit}"


def test_request_audit_daily_summarizes_yesterday():
    from datetime import UTC, datetime

    from unified_assets.assets.backlog import request_audit_daily

    context = dg.build_schedule_context(
        scheduled_execution_time=datetime(2026, 12, 2, 0, 15, tzinfo=UTC))
    request = request_audit_daily(context)
    assert request.partition_key == "2026-12-01"
    assert request.tags["unified-ai/trigger"] == "schedule"


def test_an_explanation_the_policy_refuses_escalates_as_online():
    """No explainer for a request that needs one (the placement policy's fail_and_escalate):
    escalated, naming why, as the online ingress escalates an explainer it may not use."""
    from unified_assets.serving.backlog import decide_request
    from unified_assets.serving.profiles import ServingRules

    customer = {"customer_id": 7, "refunds": [], "transactions": [
        {"transaction_id": "t1", "status": "declined", "amount": 10.0}]}
    classified = {"intent": "decline_reason", "intents": ["decline_reason"], "confidence": 0.9}
    request = {"request_id": "r1", "line": 3, "customer_id": 7, "message": "why declined?"}
    record = decide_request(request, classified, customer, {"t1": 0.9}, "m v1", None,
                            "no GPU (fail_and_escalate)", ServingRules(),
                            {"intent": "i v1", "fraud": "m v1", "explain_model": "m v1"})
    assert record["outcome"] == "escalate" and record["status"] == 200
    assert record["reason"] == "explainer unavailable: no GPU (fail_and_escalate)"
    assert "explain" not in record["versions"] and record["explanation"] is None
