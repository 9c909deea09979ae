"""Human approval and rollback on a test instance with real MLflow (sqlite) and a real
decision store (sqlite): decisions are data, signed by the people the policy lists,
promotion waits for them, rollback keeps all."""

import subprocess
import sys
import threading
import time

import dagster as dg
import pytest

from resources.decision_store import ChangeConflict, DecisionStore
from resources.mlflow_registry import MlflowRegistry
from tests.policies import with_policy
from unified_assets.approvals import ApprovalRefused
from unified_assets.champion import ChampionError, ChampionLedger
from unified_assets.decisions import LIVE_ACTOR, record_decision
from unified_assets.definitions import build_definitions
from unified_assets.identity import SIGNING_KEY_ENV, load_private_key, sign, write_key_pair
from unified_assets.lifecycle import ingest_landed, train_evaluate_promote
from unified_assets.ml.generator import write_batches

MODEL = "payments-risk"
PEOPLE = ("alice", "bob", "ops", "risk-officer")
PRODUCTION = dg.AssetKey("production_model")


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    """Key files and public keys of the people in the policy (signatures are required)."""
    folder = tmp_path_factory.mktemp("keys")
    return {name: write_key_pair(name, folder) for name in PEOPLE}


def _human_policy(keys) -> dict:
    return {"approval": {
        "approvers": ["alice", "group:leads"],
        "groups": {"leads": ["bob"]},
        "keys": {name: public for name, (_, public) in keys.items()},
        "require_signature": True,
        "require_human_when": {"first_deployment": True},
    }}


def _token(keys, actor, action, version, reason, key_of=None):
    """`actor`'s signed decision, made with `key_of`'s key (default: the actor's own)."""
    return sign(load_private_key(keys[key_of or actor][0]), action=action, model=MODEL,
                version=version, actor=actor, reason=reason)


def _champion(settings, model=MODEL):
    client = MlflowRegistry(tracking_uri=settings.mlflow_tracking_uri).client()
    try:
        return str(client.get_model_version_by_alias(model, "champion").version)
    except Exception:  # noqa: BLE001 - alias not set
        return None


@pytest.fixture
def human(settings, tmp_path, instance, keys):
    write_batches(settings.landing_dir, batches=3, rows=2000)
    settings = with_policy(settings, tmp_path, _human_policy(keys))
    defs = build_definitions(settings)
    ingest_landed(defs, instance)
    result = train_evaluate_promote(defs, instance)
    return settings, defs, result


def _decide(defs, keys, version, decision, person, reason, signer=None):
    """A decision as the CLI records it, signed with `signer`'s key (default: the person's)."""
    resources = defs.resources
    token = _token(keys, person, decision, version, reason, key_of=signer) if signer != "" else None
    return record_decision(resources["decisions"], resources["mlflow_registry"],
                           resources["policy"].policy, MODEL, version, decision, person, reason,
                           "cli", token=token)


def test_approval_required_waits_then_cli_approval_promotes_via_the_sensor(human, instance, keys):
    settings, defs, result = human
    approval = result.output_for_node("approval")
    version = approval["version"]
    assert approval["approval_state"] == "pending"
    assert "first deployment" in approval["approval"]
    assert not result.success and _champion(settings) is None
    assert instance.fetch_materializations(PRODUCTION, limit=1).records == []

    resources = defs.resources
    _decide(defs, keys, version, "approve", "bob", "reviewed the report")
    sensor = defs.resolve_sensor_def("approval_decisions_sensor")
    context = dg.build_sensor_context(instance=instance, definitions=defs,
                                      resources={"decisions": resources["decisions"]})
    tick = sensor(context)
    assert [r.run_key for r in tick.run_requests] == [f"decision:{tick.cursor}"]
    replay = sensor(dg.build_sensor_context(instance=instance, definitions=defs, cursor=tick.cursor,
                                            resources={"decisions": resources["decisions"]}))
    assert isinstance(replay, dg.SkipReason)

    run = defs.resolve_job_def("approve_or_reject").execute_in_process(instance=instance)
    assert run.success
    assert _champion(settings) == version
    assert run.output_for_node("production_model")["message"].endswith("by bob")
    history = resources["decisions"].changes(MODEL)
    assert [(c["action"], c["to_version"], c["actor"]) for c in history] == [
        ("promote", version, "bob")]


def test_rejection_from_the_ui_with_a_signed_token_ends_the_candidate(human, instance, keys):
    settings, defs, result = human
    version = result.output_for_node("approval")["version"]
    # The launchpad takes only the token `unified-ai sign reject ...` printed.
    config = {"ops": {"approval": {"config": {
        "token": _token(keys, "alice", "reject", version, "too risky")}}}}
    run = defs.resolve_job_def("approve_or_reject").execute_in_process(
        instance=instance, run_config=config, raise_on_error=False)
    assert not run.success
    check = next(e for e in run.get_asset_check_evaluations() if e.check_name == "approved")
    assert not check.passed and "rejected by alice" in check.metadata["decision"].value
    assert _champion(settings) is None
    (decision,) = [e for e in defs.resources["decisions"].events(MODEL) if e["kind"] == "decision"]
    assert decision["details"]["signed"] is True and decision["details"]["source"] == "ui"
    with pytest.raises(ApprovalRefused, match="already rejected by alice"):
        _decide(defs, keys, version, "approve", "bob", "changed my mind")


def test_unauthorized_unsigned_or_invalid_decisions_are_refused_and_recorded(human, instance, keys):
    settings, defs, result = human
    version = result.output_for_node("approval")["version"]
    with pytest.raises(ApprovalRefused, match="'mallory' may not approve"):
        _decide(defs, keys, version, "approve", "mallory", "ship it", signer="")
    with pytest.raises(ApprovalRefused, match="'group:leads' is a group, not a person"):
        _decide(defs, keys, version, "approve", "group:leads", "ship it", signer="")
    with pytest.raises(ApprovalRefused, match="not signed and the policy requires signatures"):
        _decide(defs, keys, version, "approve", "alice", "ship it", signer="")
    with pytest.raises(ApprovalRefused, match="does not match 'alice'"):
        _decide(defs, keys, version, "approve", "alice", "ship it", signer="bob")
    with pytest.raises(ApprovalRefused, match="not a registered version"):
        _decide(defs, keys, "999", "approve", "alice", "ship it")
    other = "1" if version != "1" else "2"
    with pytest.raises(ApprovalRefused, match="has no approval request"):
        _decide(defs, keys, other, "approve", "alice", "ship it")
    # A typed name in the launchpad, without a token, is refused the same way.
    config = {"ops": {"approval": {"config": {
        "decision": "approve", "version": version, "approver": "alice", "reason": "ship it"}}}}
    ui = defs.resolve_job_def("approve_or_reject").execute_in_process(
        instance=instance, run_config=config, raise_on_error=False)
    assert not ui.success and "not signed" in str(ui.all_events)
    refusals = [e for e in defs.resources["decisions"].events(MODEL) if e["kind"] == "refusal"]
    assert [r["actor"] for r in refusals] == ["mallory", "group:leads", "alice", "alice", "alice",
                                             "alice", "alice"]
    assert "may not approve" in refusals[0]["reason"]
    assert _champion(settings) is None
    # An approval recorded unsigned (under a policy that allowed it then) is not acted on now.
    defs.resources["decisions"].append_event(
        model_name=MODEL, version=version, kind="decision", decision="approve", actor="alice",
        reason="ok", details={"source": "cli", "signed": False})
    later = defs.resolve_job_def("approve_or_reject").execute_in_process(
        instance=instance, raise_on_error=False)
    assert later.output_for_node("approval")["approval_state"] == "unverified"
    check = next(e for e in later.get_asset_check_evaluations() if e.check_name == "approved")
    assert not check.passed and "not acted on: it is unsigned" in check.description
    assert _champion(settings) is None


def test_cli_pending_approve_history_and_rollback_commands(human, tmp_path, keys):
    settings, defs, result = human
    version = result.output_for_node("approval")["version"]
    env = {"UNIFIED_AI_HOME": str(settings.home), "UNIFIED_AI_POLICY": settings.policy_path,
           "DAGSTER_HOME": str(tmp_path / "dh"), "PATH": ""}
    cli = [sys.executable, "-m", "unified_assets.cli"]

    def run(*args, key=None):
        signing = {SIGNING_KEY_ENV: str(keys[key][0])} if key else {}
        return subprocess.run(cli + list(args), capture_output=True, text=True, env=env | signing)

    pending = run("pending")
    assert f"v{version}" in pending.stdout and "first deployment" in pending.stdout
    refused = run("approve", version, "--by", "mallory", "--reason", "x", key="alice")
    assert refused.returncode == 1 and "may not approve" in refused.stderr
    unsigned = run("approve", version, "--by", "alice", "--reason", "ok")
    assert unsigned.returncode == 1 and "not signed" in unsigned.stderr
    approved = run("approve", version, "--by", "alice", "--reason", "ok", key="alice")
    assert approved.returncode == 0 and "(signed)" in approved.stdout
    assert "no pending approval requests" in run("pending").stdout
    # The sensor path is tested above; here promote directly through the ledger.
    ledger = ChampionLedger(defs.resources["decisions"], defs.resources["mlflow_registry"])
    ledger.promote(MODEL, version, "alice", "approved", evaluated_against=None)
    back = run("rollback", "--by", "ops", "--reason", "bad live numbers", key="ops")
    assert back.returncode == 1 and "no earlier champion to roll back to" in back.stderr
    history = run("history")
    assert f"promote  v- -> v{version}  by alice: approved" in history.stdout
    assert "PENDING" not in history.stdout
    audit = run("audit", "verify")
    assert audit.returncode == 0 and "rows verified" in audit.stdout


def _register_versions(settings, count):
    """Tiny real sklearn versions, fast to log: enough to exercise the ledger."""
    import numpy as np
    from sklearn.linear_model import LogisticRegression

    registry = MlflowRegistry(tracking_uri=settings.mlflow_tracking_uri,
                              artifact_location=settings.mlflow_artifact_location)
    model = LogisticRegression().fit(np.array([[0.0], [1.0]]), [0, 1])
    for _ in range(count):
        registry.log_candidate(model_name="m", family="sklearn", flavor="sklearn", model=model,
                               params={}, metrics={}, tags={}, pip_requirements=["scikit-learn"])
    return registry


def test_rollback_moves_the_alias_records_an_incident_and_keeps_everything(settings):
    registry = _register_versions(settings, 3)
    store = DecisionStore(url=settings.decisions_url)
    ledger = ChampionLedger(store, registry)
    for version in ("1", "2", "3"):
        ledger.promote("m", version, "alice", f"v{version} passed")

    started = time.perf_counter()
    outcome = ledger.rollback("m", actor="ops", reason="live AUC fell")
    elapsed = time.perf_counter() - started
    assert (outcome.from_version, outcome.to_version) == ("3", "2")
    assert registry.alias_version("m") == "2"
    assert elapsed < 1.0, f"rollback took {elapsed:.2f}s"
    # Rolled-back versions are never promoted again and are skipped by the next rollback.
    with pytest.raises(ChampionError, match="v3 was rolled back before"):
        ledger.promote("m", "3", "alice", "again")
    assert ledger.rollback("m", actor="ops", reason="still bad").to_version == "1"
    assert ledger.rollback("m", actor="ops", reason="repeat", to_version="1").action == "none"
    with pytest.raises(ChampionError, match="v3 was rolled back before; it is not made champion"):
        ledger.rollback("m", actor="ops", reason="back to 3", to_version="3")
    with pytest.raises(ChampionError, match="asked for v2, but the champion is now v1"):
        ledger.rollback("m", actor="policy", reason="stale evidence", expected_from="2")
    assert [(c["action"], c["from_version"], c["to_version"]) for c in store.changes("m")] == [
        ("promote", None, "1"), ("promote", "1", "2"), ("promote", "2", "3"),
        ("rollback", "3", "2"), ("rollback", "2", "1"),
    ]
    versions = registry.client().search_model_versions("name='m'")
    assert sorted(int(v.version) for v in versions) == [1, 2, 3], "nothing deleted"


def test_rollback_job_is_refused_unless_a_listed_person_signed_it(human, instance, keys):
    settings, defs, result = human
    version = result.output_for_node("approval")["version"]
    store = defs.resources["decisions"]
    job = defs.resolve_job_def("approve_or_reject")
    approve = {"ops": {"approval": {"config": {
        "token": _token(keys, "alice", "approve", version, "ok")}}}}
    assert job.execute_in_process(instance=instance, run_config=approve).success
    assert _champion(settings) == version
    # A second champion, so there is an earlier one to go back to.
    other = "1" if version != "1" else "2"
    store.append_event(model_name=MODEL, version=other, kind="decision", decision="approve",
                       actor="policy", reason="approved for the test", details={})
    ChampionLedger(store, defs.resources["mlflow_registry"]).promote(
        MODEL, other, "policy", "second champion", evaluated_against=version)

    rollback = defs.resolve_job_def("rollback_production")

    def launch(**config):
        return rollback.execute_in_process(
            instance=instance, raise_on_error=False,
            run_config={"ops": {"production_model": {"config": {"action": "rollback", **config}}}})

    # Typing the live-performance sensor's name, or a person rollback.by does not list.
    typed = launch(by=LIVE_ACTOR, reason="looks bad", rollback_to=version, expected_from=other)
    assert not typed.success and "only from a request the sensor made itself" in str(typed.all_events)
    unlisted = launch(token=_token(keys, "risk-officer", "rollback", "", "looks bad"))
    assert not unlisted.success and "'risk-officer' may not roll back" in str(unlisted.all_events)
    assert _champion(settings) == other
    assert [i["actor"] for i in store.incidents("refusal")] == [LIVE_ACTOR, "risk-officer"]

    token = _token(keys, "ops", "rollback", "", "incident 42")
    run = launch(token=token)
    record = run.output_for_node("production_model")
    assert record["action"] == "rollback" and _champion(settings) == version
    (incident,) = store.incidents("rollback")
    assert incident["actor"] == "ops" and incident["reason"] == "incident 42"
    assert incident["details"]["from_version"] == other
    assert incident["details"]["authorization"]["signed"] is True
    assert incident["details"]["evaluation_reports"]["from"].endswith(f"v{other}.json")
    materializations = instance.fetch_materializations(PRODUCTION, limit=5).records
    assert materializations[0].asset_materialization.metadata["action"].value == "rollback"
    replayed = launch(token=token)
    assert not replayed.success and "already used" in str(replayed.all_events)
    again = launch(token=_token(keys, "ops", "rollback", version, "incident 42"))
    assert again.output_for_node("production_model")["action"] == "none"
    assert len(store.incidents("rollback")) == 1


KILL_SCRIPT = """
import sys
from resources.decision_store import DecisionStore
from resources.mlflow_registry import MlflowRegistry
from unified_assets.champion import ChampionLedger
ledger = ChampionLedger(DecisionStore(url=sys.argv[1]), MlflowRegistry(tracking_uri=sys.argv[2]))
ledger.promote("m", sys.argv[3], "alice", "killed half way")
"""


def test_promotion_killed_at_the_registry_step_leaves_a_valid_alias_and_finishes_once(settings):
    registry = _register_versions(settings, 2)
    store = DecisionStore(url=settings.decisions_url)
    ledger = ChampionLedger(store, registry)
    ledger.promote("m", "1", "alice", "first")
    killed = subprocess.run(
        [sys.executable, "-c", KILL_SCRIPT, settings.decisions_url, settings.mlflow_tracking_uri,
         "2"],
        env={"UNIFIED_AI_CRASH_AT": "registry", "PATH": ""}, capture_output=True, text=True,
    )
    assert killed.returncode == 137, killed.stderr
    assert registry.alias_version("m") == "1", "alias still on a complete, valid version"
    assert len(store.changes("m")) == 2
    outcome = ledger.promote("m", "2", "alice", "retry")
    assert outcome.action == "none" and registry.alias_version("m") == "2"
    assert len(store.changes("m")) == 2, "the retry finished the change once"


def test_two_racing_promotions_have_exactly_one_winner(settings):
    registry = _register_versions(settings, 3)
    DecisionStore(url=settings.decisions_url).changes("m")  # create tables before racing
    barrier = threading.Barrier(2)
    outcomes: dict[str, object] = {}

    class RacingLedger(ChampionLedger):
        def _sync(self, model_name):
            state = super()._sync(model_name)
            barrier.wait(timeout=10)  # both have read the same state
            return state

    def promote(version):
        ledger = RacingLedger(DecisionStore(url=settings.decisions_url), registry)
        try:
            outcomes[version] = ledger.promote("m", version, "alice", "race")
        except ChangeConflict as conflict:
            outcomes[version] = conflict

    threads = [threading.Thread(target=promote, args=(v,)) for v in ("2", "3")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    conflicts = [v for v, o in outcomes.items() if isinstance(o, ChangeConflict)]
    winners = [v for v, o in outcomes.items() if not isinstance(o, ChangeConflict)]
    assert len(conflicts) == 1 and len(winners) == 1
    assert "was already recorded" in str(outcomes[conflicts[0]])
    assert registry.alias_version("m") == winners[0]
    assert [c["to_version"] for c in DecisionStore(url=settings.decisions_url).changes("m")] == winners
