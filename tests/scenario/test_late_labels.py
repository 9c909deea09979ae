"""Late labels driven by sensor ticks: a batch lands without labels and is ingested but not
trained on; its labels land -> one request for labels + live performance; the champion's
live numbers decide: within policy -> nothing, below the floor -> one retrain, far below the
previous champion on the same rows -> one rollback (or an incident, per policy)."""

import dataclasses
from pathlib import Path

import dagster as dg
import numpy as np
import pandas as pd
import pytest
import yaml

from resources.decision_store import DecisionStore
from resources.mlflow_registry import MlflowRegistry
from tests.states import Recipe, first_champion
from unified_assets.definitions import build_definitions
from unified_assets.lifecycle import ingest_landed, train_evaluate_promote
from unified_assets.ml.generator import write_batches
from unified_assets.policy import DEFAULT_POLICY_PATH
from unified_assets.services.champion import ChampionLedger
from unified_assets.services.decisions import mint_automation_token

# Full lifecycles sharing one built state: on one xdist worker, which builds it once.
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("late-labels")]

MODEL = "payments-risk"
LIVE = dg.AssetKey("live_performance")


def _with_live_policy(settings, tmp_path, **live):
    policy = yaml.safe_load(DEFAULT_POLICY_PATH.read_text())
    policy["live"] |= live
    path = tmp_path / "policy.yaml"
    path.write_text(yaml.safe_dump(policy))
    return dataclasses.replace(settings, policy_path=str(path))


def _tick(defs, instance, name, cursor=None):
    sensor = defs.resolve_sensor_def(name)
    keys = [k for k in sensor.required_resource_keys]
    context = dg.build_sensor_context(instance=instance, cursor=cursor, definitions=defs,
                                      resources={k: defs.resources[k] for k in keys})
    return sensor(context)


def _run(defs, instance, request: dg.RunRequest, job_name: str,
         raise_on_error: bool = True) -> dg.ExecuteInProcessResult:
    job = defs.resolve_job_def(request.job_name or job_name)
    return job.execute_in_process(instance=instance, partition_key=request.partition_key,
                                  run_config=request.run_config or None, tags=request.tags,
                                  raise_on_error=raise_on_error)


def _champion(settings) -> str:
    return MlflowRegistry(tracking_uri=settings.mlflow_tracking_uri).alias_version(MODEL)


def _live_metadata(instance, batch):
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=LIVE, asset_partitions=[batch]), limit=1).records
    return records[0].asset_materialization.metadata


# Three labelled batches and a first champion: built once per session, copied per test.
CHAMPION = Recipe("late-labels:champion", first_champion(batches=3, rows=2500))


@pytest.fixture
def champion_state(states):
    with states.use(CHAMPION) as state:
        yield state


@pytest.fixture
def instance(champion_state):
    """The instance of the restored state (every test here starts from it)."""
    return champion_state.instance


@pytest.fixture
def with_champion(champion_state):
    return champion_state.settings


def _land_late_batch_and_labels(settings, defs, instance, index):
    """Batch `index` lands unlabelled and is ingested; then its labels land. Returns the
    labels sensor's request for it."""
    write_batches(settings.landing_dir, batches=1, rows=2500, first_batch=index, labels="late")
    assert ingest_landed(defs, instance).batches_ingested == [f"batch-{index:05d}"]
    write_batches(settings.landing_dir, batches=1, rows=2500, first_batch=index, labels="only")
    result = _tick(defs, instance, "labels_landing_sensor")
    (request,) = result.run_requests
    return request, result.cursor


def test_unlabelled_batch_waits_then_labels_drive_live_performance(with_champion, instance):
    settings = with_champion
    defs = build_definitions(settings)
    champion = _champion(settings)
    # Labels for a batch that came labelled are not used; labels ahead of their batch wait.
    write_batches(settings.landing_dir, batches=1, rows=2500, first_batch=0, labels="only")
    write_batches(settings.landing_dir, batches=1, rows=2500, first_batch=3, labels="only")
    early = _tick(defs, instance, "labels_landing_sensor")
    assert early.run_requests == []
    assert "labels wait for their batch: ['batch-00003']" in early.skip_reason.skip_message
    assert "labels not used, the batch batch-00000 (came labelled)" in early.skip_reason.skip_message
    (settings.landing_dir / "labels" / "batch-00003.parquet").unlink()
    write_batches(settings.landing_dir, batches=1, rows=2500, first_batch=3, labels="late")
    ingest_landed(defs, instance)
    landed = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey("landed_batch"), asset_partitions=["batch-00003"]),
        limit=1).records[0].asset_materialization.metadata
    assert landed["labelled"].value is False
    assert isinstance(_tick(defs, instance, "labels_landing_sensor", cursor=early.cursor), dg.SkipReason)

    # Retraining now leaves the unlabelled batch out and says why (the same window cannot
    # beat the champion, so the run stops at the gate; the training set is what matters here).
    train_evaluate_promote(defs, instance)
    training = instance.fetch_materializations(dg.AssetKey("training_set"), limit=1) \
        .records[0].asset_materialization.metadata
    assert "batch-00003" not in training["batches"].value
    assert "| batch-00003 | awaiting late labels |" in training["excluded_batches"].value

    write_batches(settings.landing_dir, batches=1, rows=2500, first_batch=3, labels="only")
    tick = _tick(defs, instance, "labels_landing_sensor", cursor=early.cursor)
    (request,) = tick.run_requests
    assert request.partition_key == "batch-00003"
    assert request.tags["unified-ai/trigger"] == "late-labels"
    assert request.run_key.startswith("labels:batch-00003:")
    replay = _tick(defs, instance, "labels_landing_sensor", cursor=tick.cursor)
    assert isinstance(replay, dg.SkipReason), "the same labels file is used once"

    assert _run(defs, instance, request, "ingest_labels").success
    metadata = _live_metadata(instance, "batch-00003")
    current = _champion(settings)
    assert metadata["champion_version"].value == current
    assert metadata["labelled_rows"].value == 2500
    assert metadata["live_action"].value == "ok"
    assert 0.72 < metadata["live_roc_auc"].value < 0.95
    # The number is the champion's ROC AUC on exactly these rows.
    from sklearn.metrics import roc_auc_score

    from unified_assets.ml.generator import generate_batch

    truth = generate_batch(3, 2500)
    scores = MlflowRegistry(tracking_uri=settings.mlflow_tracking_uri).load_scorer(MODEL, current)(
        truth.drop(columns=["is_fraud"]))
    # Shown to 4 significant digits (metadata is for people; the verdict uses full precision).
    assert metadata["live_roc_auc"].value == pytest.approx(roc_auc_score(truth["is_fraud"], scores),
                                                           abs=5e-4)
    assert current == champion and "previous_champion" not in metadata, "no earlier champion"

    live = _tick(defs, instance, "live_performance_sensor")
    assert live.run_requests == [] and "no action needed" in live.skip_reason.skip_message

    # The batch now counts as labelled: the next training set uses it.
    train_evaluate_promote(defs, instance)
    training = instance.fetch_materializations(dg.AssetKey("training_set"), limit=1) \
        .records[0].asset_materialization.metadata
    assert "batch-00003" in training["batches"].value


def test_bad_labels_file_is_rejected_naming_the_problem(with_champion, instance):
    settings = with_champion
    defs = build_definitions(settings)
    write_batches(settings.landing_dir, batches=1, rows=2500, first_batch=3, labels="late")
    ingest_landed(defs, instance)
    labels_dir = settings.landing_dir / "labels"
    labels_dir.mkdir()
    from unified_assets.ml.generator import generate_batch

    truth = generate_batch(3, 2500)[["transaction_id", "is_fraud"]]
    truth.iloc[:10].assign(is_fraud=3).to_parquet(labels_dir / "batch-00003.parquet")
    (request,) = _tick(defs, instance, "labels_landing_sensor").run_requests
    result = _run(defs, instance, request, "ingest_labels", raise_on_error=False)
    assert not result.success
    (check,) = result.get_asset_check_evaluations()
    assert not check.passed
    details = check.metadata["details"].value
    assert "must be binary, found values [3]" in details
    # Nothing downstream ran on bad labels, and the batch still awaits labels.
    assert instance.get_latest_materialization_event(LIVE) is None
    assert not (settings.home / "artifacts" / "labels" / "batch-00003.parquet").exists()
    assert len(pd.read_parquet(labels_dir / "batch-00003.parquet")) == 10, "the file is kept as landed"


def test_live_numbers_below_floor_request_one_retrain(with_champion, instance, tmp_path):
    settings = _with_live_policy(with_champion, tmp_path, floor=0.99)
    defs = build_definitions(settings)
    request, _ = _land_late_batch_and_labels(settings, defs, instance, 3)
    assert _run(defs, instance, request, "ingest_labels").success
    assert _live_metadata(instance, "batch-00003")["live_action"].value == "retrain"

    tick = _tick(defs, instance, "live_performance_sensor")
    (retrain,) = tick.run_requests
    assert retrain.job_name == "train_evaluate_promote"
    assert retrain.run_key == "live-retrain:batch-00003"
    assert retrain.tags["unified-ai/trigger"] == "late-labels"
    assert "below the floor 0.99" in retrain.tags["unified-ai/reason"]
    assert "unified-ai/placement" in " ".join(retrain.tags), "the placement plan travels along"
    again = _tick(defs, instance, "live_performance_sensor", cursor=tick.cursor)
    assert isinstance(again, dg.SkipReason), "the same evidence never retrains twice"

    # When the placement policy forbids the launch, the evidence is kept for a later tick.
    policy = yaml.safe_load(Path(settings.policy_path).read_text())
    policy["placement"] = {"profiles": {
        "cpu-light": {"targets": ["cpu"]}, "cpu-training": {"targets": ["cpu"]},
        "gpu-training": {"targets": ["gpu"], "on_unavailable": "fail_and_escalate"}}}
    strict = tmp_path / "strict.yaml"
    strict.write_text(yaml.safe_dump(policy))
    refused = _tick(build_definitions(dataclasses.replace(settings, policy_path=str(strict))),
                    instance, "live_performance_sensor")
    assert refused.run_requests == [] and refused.cursor is None
    assert "retrain for batch-00003 not launched: no placement" in refused.skip_reason.skip_message


def _promote_a_model_trained_on_shuffled_labels(settings, defs) -> tuple[str, str]:
    """A version that passed nobody's gate (forced by a person), and the champion before it."""
    from unified_assets.ml.sklearn_model import SklearnParams, train_sklearn

    spec = defs.resources["dataset"].spec
    registry = MlflowRegistry(tracking_uri=settings.mlflow_tracking_uri,
                              artifact_location=settings.mlflow_artifact_location)
    good = registry.alias_version(MODEL)
    frame = pd.concat([pd.read_parquet(settings.values_dir / "landed_batch" / f"batch-0000{i}.parquet")
                       for i in range(3)])
    frame[spec.target] = np.random.default_rng(0).permutation(frame[spec.target].to_numpy())
    pipeline = train_sklearn(frame, spec.numeric_features, spec.categorical_features, spec.target,
                             SklearnParams(max_iter=30))
    bad = registry.log_candidate(
        model_name=MODEL, family="sklearn", flavor="sklearn", model=pipeline, params={},
        metrics={}, tags={"training_batches": "batch-00000,batch-00001,batch-00002"},
        pip_requirements=["scikit-learn"])
    store = DecisionStore(url=settings.decisions_url)
    # A person's approval, as recorded, of a model no gate saw (the ledger promotes only
    # approved versions).
    store.append_event(model_name=MODEL, version=bad.version, kind="decision", decision="approve",
                       actor="alice", reason="hotfix approved past the gates",
                       details={"source": "cli", "signed": False})
    ChampionLedger(store, registry).promote(
        MODEL, bad.version, actor="alice", reason="hotfix pushed past the gates",
        evaluated_against=good)
    return good, bad.version


def test_live_regression_vs_previous_champion_rolls_back_once(with_champion, instance):
    settings = with_champion
    defs = build_definitions(settings)
    good, bad = _promote_a_model_trained_on_shuffled_labels(settings, defs)
    assert _champion(settings) == bad

    request, _ = _land_late_batch_and_labels(settings, defs, instance, 3)
    assert _run(defs, instance, request, "ingest_labels").success
    metadata = _live_metadata(instance, "batch-00003")
    assert metadata["live_action"].value == "rollback"
    assert metadata["previous_champion"].value == good
    assert metadata["live_roc_auc"].value < 0.6

    tick = _tick(defs, instance, "live_performance_sensor")
    (rollback,) = tick.run_requests
    assert rollback.job_name == "rollback_production"
    assert rollback.run_key == f"live-rollback:v{bad}"
    assert rollback.tags["unified-ai/trigger"] == "live-regression"
    assert _run(defs, instance, rollback, "rollback_production").success
    assert _champion(settings) == good

    store = DecisionStore(url=settings.decisions_url)
    (incident,) = store.incidents(kind="rollback")
    assert incident["actor"] == "policy:live-performance"
    assert incident["details"]["authorization"]["automation"] is True, "the sensor's own token"
    assert incident["details"]["from_version"] == bad and incident["details"]["to_version"] == good
    assert incident["details"]["live_metrics"]["batch"] == "batch-00003"
    registry = MlflowRegistry(tracking_uri=settings.mlflow_tracking_uri)
    assert registry.version_exists(MODEL, bad), "nothing is deleted"
    assert isinstance(_tick(defs, instance, "live_performance_sensor", cursor=tick.cursor),
                      dg.SkipReason)
    # Evidence about a replaced champion never moves the new one: the sensor drops it, and a
    # rollback run asked for v{bad} refuses to act now that v{good} is champion.
    replay = _tick(defs, instance, "live_performance_sensor")
    assert replay.run_requests == []
    assert "1 result(s) about an earlier champion dropped" in replay.skip_reason.skip_message
    replayed = _run(defs, instance, rollback, "rollback_production", raise_on_error=False)
    assert not replayed.success and "already used" in str(replayed.all_events), "a token acts once"
    config = rollback.run_config["ops"]["production_model"]["config"]
    fresh = mint_automation_token(store, model=MODEL, actor=config["by"], reason=config["reason"],
                                  to_version=config["rollback_to"], expected_from=bad)
    stale = _run(defs, instance, dg.RunRequest(
        job_name=rollback.job_name, tags=rollback.tags,
        run_config={"ops": {"production_model": {"config": config | {"token": fresh}}}}),
        "rollback_production", raise_on_error=False)
    assert not stale.success
    assert f"asked for v{bad}, but the champion is now v{good}" in str(stale.all_events)
    assert _champion(settings) == good


def test_policy_incident_mode_escalates_instead_of_rolling_back(with_champion, instance, tmp_path,
                                                               monkeypatch, capsys):
    settings = _with_live_policy(with_champion, tmp_path, on_regression="incident")
    defs = build_definitions(settings)
    good, bad = _promote_a_model_trained_on_shuffled_labels(settings, defs)
    request, _ = _land_late_batch_and_labels(settings, defs, instance, 3)
    assert _run(defs, instance, request, "ingest_labels").success

    tick = _tick(defs, instance, "live_performance_sensor")
    assert tick.run_requests == []
    assert "incident #" in tick.skip_reason.skip_message
    again = _tick(defs, instance, "live_performance_sensor")  # the same evidence, read again
    assert "already open" in again.skip_reason.skip_message
    (incident,) = DecisionStore(url=settings.decisions_url).incidents(kind="live_regression")
    assert incident["details"]["champion"] == bad
    assert incident["details"]["previous_champion"] == good
    assert _champion(settings) == bad, "a person decides"

    from unified_assets.cli import main

    monkeypatch.setenv("UNIFIED_AI_HOME", str(settings.home))
    monkeypatch.setenv("UNIFIED_AI_POLICY", settings.policy_path)
    assert main(["incidents", "--kind", "live_regression"]) == 0
    listed = capsys.readouterr().out
    assert f"live_regression by policy:live-performance: v{bad} live on batch-00003" in listed


def test_drift_in_an_unlabelled_batch_retrains_once_its_labels_land(with_champion, instance):
    from unified_assets.ml.generator import DriftSpec

    settings = with_champion
    defs = build_definitions(settings)
    write_batches(settings.landing_dir, batches=1, rows=2500, first_batch=3, labels="late",
                  drift=DriftSpec(start_batch=3, covariate_shift=3.0))
    # The ingestion run judges the batch (batch_drift) before its labels land; the sensor
    # acts on that evidence once they do.
    ingest_landed(defs, instance)
    early = _tick(defs, instance, "drift_retrain_sensor")
    assert early.run_requests == []
    assert "drift in ['batch-00003'] waits for their labels" in early.skip_reason.skip_message

    write_batches(settings.landing_dir, batches=1, rows=2500, first_batch=3, labels="only",
                  drift=DriftSpec(start_batch=3, covariate_shift=3.0))
    (labels,) = _tick(defs, instance, "labels_landing_sensor").run_requests
    assert _run(defs, instance, labels, "ingest_labels").success
    (retrain,) = _tick(defs, instance, "drift_retrain_sensor", cursor=early.cursor).run_requests
    assert retrain.run_key == "drift-retrain:batch-00003"
