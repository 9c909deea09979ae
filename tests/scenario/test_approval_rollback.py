"""Human approval and rollback on a test instance with real MLflow (sqlite) and a real
decision store (sqlite): decisions are data, signed by the people the policy lists,
promotion waits for them, rollback keeps all."""

import subprocess
import sys

import dagster as dg
import pytest

from resources.mlflow_registry import MlflowRegistry
from tests.policies import with_policy
from tests.states import Recipe
from unified_assets.cli import main
from unified_assets.definitions import build_definitions
from unified_assets.lifecycle import ingest_landed, train_evaluate_promote
from unified_assets.ml.generator import write_batches
from unified_assets.services.approvals import ApprovalRefused
from unified_assets.services.champion import ChampionLedger
from unified_assets.services.decisions import LIVE_ACTOR, record_decision
from unified_assets.services.identity import SIGNING_KEY_ENV, load_private_key, sign, write_key_pair
from unified_assets.services.refusals import refusal

# Full lifecycles sharing one built state: on one xdist worker, which builds it once.
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("approval")]

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


def _first_retrain_waits_for_a_person(keys):
    """Three landed batches, ingested and trained under the human-approval policy: the first
    challenger waits for a person. Built once per session; every test starts from a copy."""

    def build(settings, instance, folder, _):
        write_batches(settings.landing_dir, batches=3, rows=2000)
        settings = with_policy(settings, folder, _human_policy(keys))
        defs = build_definitions(settings)
        ingest_landed(defs, instance)
        return settings, train_evaluate_promote(defs, instance)

    return Recipe("approval:first-retrain-waits", build)


@pytest.fixture
def human_state(states, keys):
    with states.use(_first_retrain_waits_for_a_person(keys)) as state:
        yield state


@pytest.fixture
def instance(human_state):
    """The instance of the restored state (every test here starts from it)."""
    return human_state.instance


@pytest.fixture
def human(human_state):
    settings, result = human_state.settings, human_state.value
    return settings, build_definitions(settings), result


def _refusal(run) -> str:
    """The one-line reason a refused request failed its run with (None: not a refusal)."""
    (failure,) = [e for e in run.all_events if e.is_step_failure]
    return refusal(failure)


def _no_incident_for(defs, instance, run) -> None:
    """The failure sensor, evaluated on the run, files nothing: a refusal is not a fault."""
    failure = next(e for e in run.all_events if e.event_type == dg.DagsterEventType.RUN_FAILURE)
    context = dg.build_run_status_sensor_context(
        sensor_name="run_failure_incidents", dagster_event=failure, dagster_instance=instance,
        dagster_run=instance.get_run_by_id(run.run_id),
        resources={k: defs.resources[k] for k in ("decisions", "escalation")},
    ).for_run_failure()
    defs.resolve_sensor_def("run_failure_incidents")(context)
    assert defs.resources["decisions"].incidents("run_failure") == []


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
    version = approval.version
    assert approval.approval_state == "pending"
    assert "first deployment" in approval.approval
    # Waiting for a person is an outcome: a green run, nothing promoted, the wait listed.
    assert result.success and _champion(settings) is None
    assert instance.fetch_materializations(PRODUCTION, limit=1).records == []
    assert result.asset_materializations_for_node("production_model") == []
    (materialized,) = result.asset_materializations_for_node("approval")
    assert materialized.metadata["awaiting_decision"].value == f"v{version}"
    assert "first deployment" in materialized.metadata["awaiting_decision_detail"].value
    check = next(e for e in result.get_asset_check_evaluations() if e.check_name == "approved")
    assert not check.passed and check.blocking and check.severity == dg.AssetCheckSeverity.WARN

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
    version = result.output_for_node("approval").version
    # The launchpad takes only the token `unified-ai sign reject ...` printed.
    config = {"token": _token(keys, "alice", "reject", version, "too risky")}
    run = defs.resolve_job_def("approve_or_reject").execute_in_process(
        instance=instance, run_config=config, raise_on_error=False)
    assert run.success, "a rejection carried out is an outcome, not a failure"
    assert run.asset_materializations_for_node("production_model") == []
    check = next(e for e in run.get_asset_check_evaluations() if e.check_name == "approved")
    assert not check.passed and "rejected by alice" in check.metadata["decision"].value
    assert _champion(settings) is None
    (decision,) = [e for e in defs.resources["decisions"].events(MODEL) if e["kind"] == "decision"]
    assert decision["details"]["signed"] is True and decision["details"]["source"] == "ui"
    with pytest.raises(ApprovalRefused, match="already rejected by alice"):
        _decide(defs, keys, version, "approve", "bob", "changed my mind")


def test_unauthorized_unsigned_or_invalid_decisions_are_refused_and_recorded(human, instance, keys):
    settings, defs, result = human
    version = result.output_for_node("approval").version
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
    config = {"decision": "approve", "version": version, "approver": "alice", "reason": "ship it"}
    ui = defs.resolve_job_def("approve_or_reject").execute_in_process(
        instance=instance, run_config=config, raise_on_error=False)
    assert not ui.success
    assert _refusal(ui).startswith("decision refused and recorded: ")
    assert "not signed" in _refusal(ui) and "\n" not in _refusal(ui)
    _no_incident_for(defs, instance, ui)
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
    assert later.output_for_node("approval").approval_state == "unverified"
    check = next(e for e in later.get_asset_check_evaluations() if e.check_name == "approved")
    assert not check.passed and "not acted on: it is unsigned" in check.description
    assert _champion(settings) is None


def _unqueued_home(path):
    """A DAGSTER_HOME whose runs launch at once (no run queue, so no daemon needed)."""
    path.mkdir(parents=True, exist_ok=True)
    (path / "dagster.yaml").write_text(
        "run_coordinator:\n  module: dagster._core.run_coordinator\n"
        "  class: DefaultRunCoordinator\ntelemetry:\n  enabled: false\n")
    return path


def test_cli_pending_approve_history_and_rollback_commands(human, tmp_path, keys, monkeypatch,
                                                           capsys):
    settings, defs, result = human
    version = result.output_for_node("approval").version
    env = {"UNIFIED_AI_HOME": str(settings.home), "UNIFIED_AI_POLICY": settings.policy_path,
           "DAGSTER_HOME": str(tmp_path / "dh"), "PATH": ""}
    cli = [sys.executable, "-m", "unified_assets.cli"]
    # A DAGSTER_HOME that is not a folder (a typo) is named in one line, nothing launched.
    missing = subprocess.run(cli + ["rollback", "--by", "ops", "--reason", "r"], env=env,
                             capture_output=True, text=True)
    assert missing.returncode == 1 and len(missing.stderr.strip().splitlines()) == 1
    assert f"DAGSTER_HOME={tmp_path / 'dh'} is not a folder" in missing.stderr
    (tmp_path / "dh").mkdir()  # an instance on Dagster's defaults: runs are queued

    def run(*args, key=None):
        """The command in its own process, as a user types it."""
        signing = {SIGNING_KEY_ENV: str(keys[key][0])} if key else {}
        return subprocess.run(cli + list(args), capture_output=True, text=True, env=env | signing)

    def call(*args, key=None):
        """The same command through `main` in this process (the commands that launch no run:
        each process start costs seconds of imports)."""
        for name, value in env.items():
            if name != "PATH":
                monkeypatch.setenv(name, value)
        if key:
            monkeypatch.setenv(SIGNING_KEY_ENV, str(keys[key][0]))
        else:
            monkeypatch.delenv(SIGNING_KEY_ENV, raising=False)
        capsys.readouterr()
        code = main(list(args))
        out, err = capsys.readouterr()
        return subprocess.CompletedProcess(list(args), code, out, err)

    pending = call("pending")
    assert f"v{version}" in pending.stdout and "first deployment" in pending.stdout
    refused = call("approve", version, "--by", "mallory", "--reason", "x", key="alice")
    assert refused.returncode == 1 and "may not approve" in refused.stderr
    unsigned = call("approve", version, "--by", "alice", "--reason", "ok")
    assert unsigned.returncode == 1 and "not signed" in unsigned.stderr
    approved = call("approve", version, "--by", "alice", "--reason", "ok", key="alice")
    assert approved.returncode == 0 and "(signed)" in approved.stdout
    assert "no pending approval requests" in call("pending").stdout
    # The sensor path is tested above; here promote directly through the ledger.
    ledger = ChampionLedger(defs.resources["decisions"], defs.resources["mlflow_registry"])
    ledger.promote(MODEL, version, "alice", "approved", evaluated_against=None)
    # The rollback is a run of the instance (DAGSTER_HOME), submitted to its run coordinator:
    # with no daemon to dequeue it, it stays queued and the command says so in one line.
    queued = run("rollback", "--by", "ops", "--reason", "bad live numbers", key="ops")
    assert len(queued.stderr.strip().splitlines()) == 1, queued.stderr
    (line,) = queued.stderr.strip().splitlines()
    assert queued.stdout == "", "nothing else (Dagster's notices included) around the outcome"
    assert queued.returncode == 1 and "no Dagster daemon is running" in line
    with dg.DagsterInstance.from_config(env["DAGSTER_HOME"]) as dagster:
        (record,) = dagster.get_run_records(dg.RunsFilter(job_name="rollback_production"))
    run_ = record.dagster_run
    assert run_.run_id in line and run_.status == dg.DagsterRunStatus.QUEUED
    assert run_.tags["unified-ai/source"] == "cli" and run_.tags["dagster/priority"] == "10"
    assert run_.tags["unified-ai/trigger"] == "cli"
    assert run_.tags["unified-ai/reason"] == "rollback by ops: bad live numbers"
    # Launched directly (no queue), the run executes in the code server and the ledger refuses.
    env["DAGSTER_HOME"] = str(_unqueued_home(tmp_path / "dh-direct"))
    back = run("rollback", "--by", "ops", "--reason", "bad live numbers", key="ops")
    (line,) = back.stderr.strip().splitlines()
    assert back.returncode == 1 and line.startswith("rollback refused (run ")
    assert "no earlier champion to roll back to" in line
    history = call("history")
    assert f"(none) → v{version}" in history.stdout and "by alice: approved" in history.stdout
    assert "PENDING" not in history.stdout
    audit = call("audit", "verify")
    assert audit.returncode == 0 and "rows verified" in audit.stdout


def test_rollback_job_is_refused_unless_a_listed_person_signed_it(human, instance, keys):
    settings, defs, result = human
    version = result.output_for_node("approval").version
    store = defs.resources["decisions"]
    job = defs.resolve_job_def("approve_or_reject")
    approve = {"token": _token(keys, "alice", "approve", version, "ok")}
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
    assert not typed.success and "only from a request the sensor made itself" in _refusal(typed)
    unlisted = launch(token=_token(keys, "risk-officer", "rollback", "", "looks bad"))
    assert not unlisted.success and "'risk-officer' may not roll back" in _refusal(unlisted)
    _no_incident_for(defs, instance, unlisted)
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
    other_run = defs.resources["mlflow_registry"].client().get_model_version(MODEL, other).run_id
    assert incident["details"]["evaluation_reports"]["from"].startswith(f"runs:/{other_run}/")
    materializations = instance.fetch_materializations(PRODUCTION, limit=5).records
    assert materializations[0].asset_materialization.metadata["action"].value == "rollback"
    replayed = launch(token=token)
    assert not replayed.success and "already used" in _refusal(replayed)
    again = launch(token=_token(keys, "ops", "rollback", version, "incident 42"))
    assert again.output_for_node("production_model")["action"] == "none"
    assert len(store.incidents("rollback")) == 1
    # Authorized, then refused by the ledger (v99 was never champion): the log says so.
    refused = launch(token=_token(keys, "ops", "rollback", "99", "to a version never deployed"))
    assert not refused.success and "v99 is not a registered version" in _refusal(refused)
    _no_incident_for(defs, instance, refused)
    last = store.events(MODEL)[-1]
    assert (last["kind"], last["actor"], last["version"]) == ("refusal", "ops", "99")
    assert last["reason"].startswith("refused by the ledger: v99 is not a registered version")


def test_a_rollback_live_traffic_cannot_follow_fails_saying_so_and_keeps_the_change(
        human, instance, keys):
    """Once `serving` is deployed, live traffic follows a champion change in the same run.
    Here its Ray dashboard is gone (a port nobody listens on): the rollback is done and
    recorded, and the run fails saying live traffic still gets the old version; the sensor
    that redeploys serving then asks for a deployment."""
    import socket

    from unified_assets.assets.serving import build_serving_sensor
    from unified_assets.serving.follow import served

    settings, defs, result = human
    version = result.output_for_node("approval").version
    store = defs.resources["decisions"]
    approve = {"token": _token(keys, "alice", "approve", version, "ok")}
    first = defs.resolve_job_def("approve_or_reject").execute_in_process(
        instance=instance, run_config=approve)
    (promoted,) = first.asset_materializations_for_node("production_model")
    assert "never deployed" in promoted.metadata["serving"].value  # nothing to move yet
    other = "1" if version != "1" else "2"
    store.append_event(model_name=MODEL, version=other, kind="decision", decision="approve",
                       actor="policy", reason="approved for the test", details={})
    ChampionLedger(store, defs.resources["mlflow_registry"]).promote(
        MODEL, other, "policy", "second champion", evaluated_against=version)
    with socket.socket() as probe:  # a free port, closed again: connections are refused
        probe.bind(("127.0.0.1", 0))
        gone = f"http://127.0.0.1:{probe.getsockname()[1]}"
    instance.report_runless_asset_event(dg.AssetMaterialization(
        "serving", metadata={"champion_version": other, "ray_dashboard": dg.MetadataValue.url(gone)}))

    run = defs.resolve_job_def("rollback_production").execute_in_process(
        instance=instance, raise_on_error=False, run_config={"ops": {"production_model": {
            "config": {"action": "rollback",
                       "token": _token(keys, "ops", "rollback", "", "incident 7")}}}})
    assert not run.success
    (failure,) = [e for e in run.all_events if e.is_step_failure]
    said = failure.step_failure_data.error.message
    assert f"champion is v{version} (recorded)" in said and f"live traffic still on v{other}" in said
    assert "deploy_serving" in said
    # The change is kept: the alias moved, the ledger says done, production_model recorded it.
    assert _champion(settings) == version
    last = store.changes(MODEL)[-1]
    assert (last["action"], last["to_version"], last["status"]) == ("rollback", version, "done")
    record = instance.fetch_materializations(PRODUCTION, limit=1).records[0]
    metadata = record.asset_materialization.metadata
    assert metadata["action"].value == "rollback" and "still on" in metadata["serving"].value
    # Serving still says the old version; its sensor asks for a redeployment.
    assert served(instance).version == other
    with dg.build_sensor_context(instance=instance, resources=defs.resources) as context:
        assert isinstance(build_serving_sensor()(context), dg.RunRequest)
