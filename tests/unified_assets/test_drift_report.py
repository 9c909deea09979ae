"""The Evidently drift report: its verdicts on synthetic frames, and the asset end to end on a
real champion (MLflow sqlite, Parquet in temp folders) next to `batch_drift`'s decision."""

from pathlib import Path

import dagster as dg
import numpy as np
import pandas as pd
import pytest

from unified_assets.assets.data import LANDED_BATCH, landed_batch
from unified_assets.assets.drift_report import drift_report
from unified_assets.definitions import build_definitions
from unified_assets.lifecycle import ingest_landed
from unified_assets.ml.evidently_report import SAMPLE_ROWS, evidently_drift
from unified_assets.ml.generator import DriftSpec, write_batches
from unified_assets.partitions import BATCHES

RESOURCES = ("dataset", "store", "values_io_manager", "mlflow_registry", "policy")
CALM, DRIFTED = "batch-00003", "batch-00004"


def _frame(rows: int, shifted: bool, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    letters = np.array(list("abc"), dtype=object)
    return pd.DataFrame({
        "moved": rng.normal(0.5 if shifted else 0.0, 1.0, rows),
        "still": rng.normal(0.0, 1.0, rows),
        "kind": rng.choice(letters, rows, p=[0.2, 0.3, 0.5] if shifted else [0.5, 0.3, 0.2]),
    })


def test_evidently_drift_flags_the_shifted_columns_and_reports_sampling():
    reference, current = _frame(4000, False, seed=1), _frame(3000, True, seed=2)
    html, summary = evidently_drift(reference, current, ["moved", "still"], ["kind"],
                                    num_threshold=None, cat_threshold=None, drift_share=0.5,
                                    sample_rows=2500)
    verdicts = {c["column"]: c for c in summary["columns"]}
    assert summary["drifted_columns"] == ["moved", "kind"]
    assert not verdicts["still"]["drifted"]
    assert verdicts["moved"]["statistic"] == "Wasserstein distance (normed)"
    assert verdicts["kind"]["statistic"] == "Jensen-Shannon distance"
    assert {c["threshold"] for c in summary["columns"]} == {0.1}
    assert summary["number_of_drifted_columns"] == 2
    assert summary["share_of_drifted_columns"] == pytest.approx(2 / 3)
    assert summary["dataset_drift"] is True
    assert summary["rows"] == {"reference": 4000, "current": 3000, "reference_compared": 2500,
                               "current_compared": 2500, "sampled": True, "sample_cap": 2500}
    assert "<html" in html[:500] and '"column_name": "moved"' in html and "Wasserstein" in html


def _materialize(defs: dg.Definitions, instance: dg.DagsterInstance, batch: str,
                 assets: list) -> dg.ExecuteInProcessResult:
    return dg.materialize([landed_batch, *assets], selection=assets, partition_key=batch,
                          instance=instance, raise_on_error=False,
                          resources={k: defs.resources[k] for k in RESOURCES})


def _metadata(result: dg.ExecuteInProcessResult) -> dict:
    (event,) = [e for e in result.get_asset_materialization_events()
                if e.asset_key == dg.AssetKey("drift_report")]
    return {k: v.value for k, v in event.materialization.metadata.items()}


def _promote_a_champion(defs: dg.Definitions, batches: list[str]) -> str:
    """A small sklearn model on `batches`, registered with their names and made champion: the
    registry state the lifecycle leaves (version tag `training_batches`, alias `champion`),
    in seconds rather than a full train-evaluate-promote run."""
    from unified_assets.ml.sklearn_model import SklearnParams, train_sklearn

    spec, values = defs.resources["dataset"].spec, defs.resources["values_io_manager"]
    registry = defs.resources["mlflow_registry"]
    frame = pd.concat([values.load(LANDED_BATCH, b) for b in batches])
    model = train_sklearn(frame, spec.numeric_features, spec.categorical_features, spec.target,
                          SklearnParams(max_iter=10))
    version = registry.log_candidate(
        model_name=spec.name, family="sklearn", flavor="sklearn", model=model, params={}, metrics={},
        tags={"training_batches": ",".join(batches)}, pip_requirements=["scikit-learn"]).version
    registry.set_alias(spec.name, version)
    return version


def test_drift_report_next_to_the_profile_decision(settings, instance):
    write_batches(settings.landing_dir, batches=3, rows=1500)
    defs = build_definitions(settings)
    trained_on = ingest_landed(defs, instance).batches_ingested
    before = _materialize(defs, instance, "batch-00000", [drift_report])
    assert _metadata(before)["verdict"] == "no champion yet: nothing to compare"
    champion = _promote_a_champion(defs, trained_on)

    write_batches(settings.landing_dir, batches=1, rows=1500, first_batch=3)
    write_batches(settings.landing_dir, batches=1, rows=1500, first_batch=4,
                  drift=DriftSpec(start_batch=4, covariate_shift=3.0))
    tick = dg.evaluate_automation_conditions(defs=defs, instance=instance)
    ingest_landed(defs, instance)  # judged there (batch_drift)
    # Batches landed together get their reports in one run (the reference is read once),
    # one materialization each, as automation requests them (the asset's backfill policy).
    tick = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=tick.cursor)
    assert tick.get_requested_partitions(drift_report.key) == {CALM, DRIFTED}
    assert drift_report.backfill_policy.max_partitions_per_run > 1
    result = dg.materialize([landed_batch, drift_report], selection=[drift_report],
                            instance=instance, resources={k: defs.resources[k] for k in RESOURCES},
                            tags={"dagster/asset_partition_range_start": CALM,
                                  "dagster/asset_partition_range_end": DRIFTED})
    assert result.success
    reports = {e.partition: {k: v.value for k, v in e.materialization.metadata.items()}
               for e in result.get_asset_materialization_events()
               if e.asset_key == drift_report.key}
    assert set(reports) == {CALM, DRIFTED}

    loud, quiet = reports[DRIFTED], reports[CALM]
    content = _logged_report(settings, loud)
    assert len(content) > 10_000 and "<html" in content[:500] and "DATA DRIFT" in content
    assert '"column_name": "amount"' in content
    assert loud["dataset_drift"] is True and quiet["dataset_drift"] is False
    assert {"amount", "txn_count_24h", "distance_from_home_km"} <= set(loud["drifted_columns"])
    assert loud["champion_version"] == champion
    assert loud["reference_batches"] == ["batch-00000", "batch-00001", "batch-00002"]
    assert loud["reference_rows"] == 4500 and loud["current_rows"] == 1500 and loud["sampled"] is False
    for metadata in (loud, quiet):
        assert metadata["agreement_with_profile_decision"] >= 0.9
    assert "| amount | Wasserstein distance (normed) |" in loud["columns"]
    assert "| **yes** | **yes** |" in loud["columns"]
    drifted = loud["drifted_columns"]
    assert loud["summary"].startswith(f"Dataset drift detected: {len(drifted)} of 13 columns drifted")
    assert all(column in loud["summary"] for column in drifted)
    assert quiet["summary"].startswith("Dataset drift not detected")
    assert not (settings.artifacts_dir / "drift_reports").exists(), "MLflow holds the report"
    description = drift_report.descriptions_by_key[dg.AssetKey("drift_report")]
    assert f"at most {SAMPLE_ROWS:,} per side" in description


def _logged_report(settings, metadata: dict) -> str:
    """The HTML the metadata links to, read from the MLflow run the link names: a run of the
    drift experiment, opened on the MLflow UI's run page (default URL when none is set)."""
    from mlflow import MlflowClient

    page, file = metadata["report"], metadata["report_file"]
    assert page.startswith("http://127.0.0.1:5000/#/experiments/")
    _, experiment_id, _, run_id, _, *path = page.split("#/", 1)[1].split("/")
    assert file == (f"http://127.0.0.1:5000/get-artifact?path={'%2F'.join(path)}"
                    f"&run_uuid={run_id}")
    client = MlflowClient(tracking_uri=settings.mlflow_tracking_uri)
    run = client.get_run(run_id)
    assert client.get_experiment(experiment_id).name == "unified-ai-drift"
    assert run.info.experiment_id == experiment_id and run.info.status == "FINISHED"
    assert run.data.tags["batch"] == DRIFTED and run.data.tags["dagster_run_id"]
    assert run.data.metrics["share_of_drifted_columns"] == pytest.approx(
        metadata["share_of_drifted_columns"], abs=1e-3)
    return Path(client.download_artifacts(run_id, "/".join(path))).read_text()


def test_the_summary_names_every_drifted_column_or_how_many_more():
    """Found: the drift reason named 5 of 7 drifted columns without '...'."""
    from unified_assets.assets.drift_report import drift_summary

    summary = {"dataset_drift": True, "number_of_drifted_columns": 12, "number_of_columns": 13,
               "share_of_drifted_columns": 12 / 13, "drift_share": 0.3,
               "drifted_columns": [f"c{i}" for i in range(12)]}
    text = drift_summary(summary)
    assert text.startswith("Dataset drift detected: 12 of 13 columns drifted (share 0.9231, "
                           "threshold 0.3): c0, c1,")
    assert text.endswith("c9 and 2 more")
    calm = summary | {"dataset_drift": False, "number_of_drifted_columns": 1,
                      "share_of_drifted_columns": 1 / 13, "drifted_columns": ["c0"]}
    assert drift_summary(calm) == ("Dataset drift not detected: 1 of 13 columns drifted "
                                   "(share 0.07692, threshold 0.3): c0")


def test_a_batch_without_curated_data_fails_naming_it(settings, instance):
    defs = build_definitions(settings)
    instance.add_dynamic_partitions(BATCHES.name, ["batch-rejected"])
    result = _materialize(defs, instance, "batch-rejected", [drift_report])
    assert not result.success
    failure = next(e for e in result.all_events if e.is_step_failure)
    assert "batch batch-rejected has no curated data" in str(failure.step_failure_data.error)
