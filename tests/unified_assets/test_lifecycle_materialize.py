"""Assets materialized on a test instance with real resources: real MLflow (sqlite),
real Parquet files in temp folders."""

import json
from pathlib import Path

import dagster as dg
import pytest

from resources.mlflow_registry import MlflowRegistry
from tests.states import Recipe
from unified_assets.definitions import build_definitions
from unified_assets.lifecycle import ingest_landed, run_lifecycle, summarize, train_evaluate_promote
from unified_assets.ml.generator import write_batches

# The tests sharing FIRST run on one xdist worker, which builds it once.
pytestmark = pytest.mark.xdist_group("materialize")


@pytest.fixture
def landed(settings):
    write_batches(settings.landing_dir, batches=4, rows=1500)
    return settings


def _first_lifecycle(settings, instance, _folder, _base):
    write_batches(settings.landing_dir, batches=4, rows=1500)
    return settings, run_lifecycle(settings, instance)


# Four landed batches through the whole lifecycle (`run_lifecycle`): built once per session,
# each test below starts from a copy (its summary, home folder, MLflow store and instance).
FIRST = Recipe("materialize:first-lifecycle", _first_lifecycle)


@pytest.fixture
def first(states):
    with states.use(FIRST) as state:
        yield state


def _materializations(instance, asset):
    return instance.fetch_materializations(dg.AssetKey(asset), limit=10).records


@pytest.mark.slow
def test_first_lifecycle_registers_both_candidates_and_promotes_the_best(first):
    landed, instance, summary = first.settings, first.instance, first.value
    assert summary.batches_ingested == [f"batch-0000{i}" for i in range(4)]
    assert summary.batches_rejected == {}

    versions = {f: r.version for f, r in summary.candidates.items()}
    assert sorted(versions.values()) == ["1", "2"]
    for report in summary.candidates.values():
        assert report.overall["roc_auc"] > 0.65
        assert report.overall["rows"] == report.holdout_rows > 800
        assert report.passed_gates is True
        assert report.champion is None
        assert {s["segment"] for s in report.segments} == {"region", "customer_tier"}
        assert report.training_batches == summary.batches_ingested

    # Evidently's HTML is not on the promotion path (quality_report_*, test_report_links.py).
    assert not (landed.artifacts_dir / "reports").exists()
    assert not _materializations(instance, "quality_report_sklearn")
    best = max(summary.candidates.values(), key=lambda r: r.overall["roc_auc"])
    client = MlflowRegistry(tracking_uri=landed.mlflow_tracking_uri).client()
    champion = client.get_model_version_by_alias("payments-risk", "champion")
    assert str(champion.version) == best.version == summary.production["champion"]
    assert summary.production["from_version"] is None
    assert summary.production["action"] == "promote"
    assert client.get_model_version("payments-risk", champion.version).tags["family"] == best.family

    # The report decisions cite is the JSON logged to the candidate's MLflow run.
    from mlflow.artifacts import download_artifacts

    run_id = client.get_model_version("payments-risk", best.version).run_id
    assert best.report_uri.startswith(f"runs:/{run_id}/")
    logged = download_artifacts(best.report_uri, tracking_uri=landed.mlflow_tracking_uri)
    assert json.loads(Path(logged).read_text())["overall"]["roc_auc"] == best.overall["roc_auc"]

    training = _materializations(instance, "training_set")[0].asset_materialization.metadata
    assert training["batches"].value == summary.batches_ingested
    assert training["train_rows"].value + training["holdout_rows"].value == 6000
    # Every step says where it ran and why, not only the model steps (found: two of twelve).
    for asset in ("landed_batch", "training_set", "model_sklearn", "model_torch",
                  "evaluation_sklearn", "evaluation_torch", "challenger", "approval",
                  "production_model"):
        metadata = _materializations(instance, asset)[0].asset_materialization.metadata
        assert metadata["placement_target"].value == "cpu", asset
        assert metadata["placement_reason"].value, asset


@pytest.mark.slow
def test_torch_candidate_on_cpu_host_says_it_fell_back(first):
    instance = first.instance
    metadata = _materializations(instance, "model_torch")[0].asset_materialization.metadata
    assert metadata["device"].value == "cpu"
    assert metadata["cuda_available"].value is False
    # ~4,800 training rows: under the policy's small_input_rows, the GPU would be waste.
    assert metadata["placement_target"].value == "cpu"
    assert "< small_input_rows 10000: a GPU would be waste" in metadata["device_reason"].value


@pytest.mark.slow
def test_second_run_compares_with_the_champion_on_the_same_holdout(first):
    landed, instance, first = first.settings, first.instance, first.value
    first_champion = first.production["champion"]
    defs = build_definitions(landed)
    result = train_evaluate_promote(defs, instance)
    second = {f: result.output_for_node(f"evaluation_{f}") for f in ("sklearn", "torch")}
    for report in second.values():
        assert report.champion.version == first_champion
        assert report.holdout_rows == first.candidates["torch"].holdout_rows
    # Same data and seeds: the retrained twin ties the champion, short of the policy's margin.
    held = summarize(result)
    assert held.challenger is None and "beats_champion" in held.held
    assert result.success, "a hold is an outcome: a green run"
    assert len(instance.fetch_materializations(dg.AssetKey("production_model"), limit=5).records) == 1
    client = MlflowRegistry(tracking_uri=landed.mlflow_tracking_uri).client()
    assert str(client.get_model_version_by_alias("payments-risk", "champion").version) == first_champion


@pytest.mark.slow
def test_new_batches_extend_the_window_and_keep_the_holdout_fixed(first):
    landed, instance = first.settings, first.instance
    defs = build_definitions(landed)
    # The first lifecycle's training set (batches 0-3), as stored by its IO manager.
    first = defs.load_asset_value(dg.AssetKey("training_set"), instance=instance)
    assert first.batches == [f"batch-0000{i}" for i in range(4)]
    write_batches(landed.landing_dir, batches=2, rows=1500, first_batch=4)
    assert ingest_landed(defs, instance).batches_ingested == ["batch-00004", "batch-00005"]
    config = {"ops": {"training_set": {"config": {"window_batches": 5}}}}
    second = train_evaluate_promote(defs, instance, config).output_for_node("training_set")
    assert second.batches == [f"batch-0000{i}" for i in range(1, 6)]
    shared = set(first.holdout.row_id) & set(second.train.row_id)
    assert shared == set()


def test_bad_config_value_names_the_field(landed, instance):
    defs = build_definitions(landed)
    ingest_landed(defs, instance)
    with pytest.raises(dg.DagsterInvalidConfigError, match="window_batches"):
        train_evaluate_promote(defs, instance, {"ops": {"training_set": {"config": {
            "window_batches": "eight"}}}})
    with pytest.raises(dg.DagsterInvalidConfigError, match="device"):
        train_evaluate_promote(defs, instance, {"ops": {"model_torch": {"config": {
            "device": "tpu"}}}})
    assert _materializations(instance, "training_set") == []


@pytest.mark.slow
def test_the_benchmarks_plain_baseline_computes_what_the_lifecycle_computes(first, settings):
    """bench/lifecycle_overhead.py divides by bench/plain_lifecycle.py: a baseline doing less
    than the assets (the evaluation's single-feature AUCs, its report logged to MLflow) would
    count that work as Dagster's overhead."""
    import shutil
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
    try:
        from plain_lifecycle import run_plain_lifecycle
    finally:
        sys.path.pop(0)
    shutil.copytree(first.settings.landing_dir, settings.landing_dir)
    plain = run_plain_lifecycle(settings)
    summary = first.value

    assert plain.batches_ingested == summary.batches_ingested
    assert set(plain.candidates) == set(summary.candidates) == {"sklearn", "torch"}
    for family, report in summary.candidates.items():
        baseline = plain.candidates[family]
        timeless = {k: v for k, v in report.overall.items() if not k.startswith("latency")}
        assert {k: baseline.overall[k] for k in timeless} == pytest.approx(timeless), family
        assert baseline.feature_auc == pytest.approx(report.feature_auc) and report.feature_auc
        assert {n: g.passed for n, g in baseline.gates.items()} == \
            {n: g.passed for n, g in report.gates.items()}
        assert baseline.report_uri.startswith("runs:/") and baseline.links.report
    assert plain.production["champion"] == summary.production["champion"]


def test_the_training_set_reads_the_batches_records_once(landed, instance, monkeypatch):
    """The window is chosen from every batch's latest ingestion, read together; reading the
    rows then does not ask for each batch's record again (eight queries of 8)."""
    from unified_assets.assets import data

    defs = build_definitions(landed)
    ingest_landed(defs, instance)
    reads: list[list[str]] = []
    latest = data.latest_materializations

    def counted(instance, key, partitions):
        reads.append(list(partitions))
        return latest(instance, key, partitions)

    monkeypatch.setattr(data, "latest_materializations", counted)
    result = defs.resolve_implicit_global_asset_job_def().execute_in_process(
        instance=instance, asset_selection=[dg.AssetKey("training_set")])
    assert result.success
    assert len(reads) == 1 and len(reads[0]) == 4, reads


def test_ingesting_lists_the_landing_zone_without_a_throwaway_instance(landed, instance,
                                                                      monkeypatch):
    """Resources built outside a run get the run's instance: without one, Dagster makes an
    in-memory instance (its storages migrated by alembic, 0.05-0.08 s) for every listing."""
    made: list[str] = []
    ephemeral = dg.DagsterInstance.ephemeral

    def counted(*args, **kwargs):
        made.append("ephemeral")
        return ephemeral(*args, **kwargs)

    monkeypatch.setattr(dg.DagsterInstance, "ephemeral", staticmethod(counted))
    summary = ingest_landed(build_definitions(landed), instance)
    assert summary.batches_ingested == [f"batch-0000{i}" for i in range(4)]
    assert made == []
