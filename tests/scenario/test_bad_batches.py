"""Scenario: malformed batches land beside good ones. Each gets a clear, failing blocking
check naming the file and field; none reaches training; nothing is deleted."""

import dagster as dg
import pytest

from unified_assets.assets.data import batch_findings, landed_batch
from unified_assets.definitions import build_definitions
from unified_assets.lifecycle import ingest_landed, train_evaluate_promote
from unified_assets.ml.batch_validation import CHECK_NAMES
from unified_assets.ml.generator import generate_batch, write_batches

pytestmark = pytest.mark.slow  # real ingestion runs, a full retrain


def _land_bad_batches(landing):
    wrong_type = generate_batch(10, 200)
    wrong_type["amount"] = wrong_type["amount"].astype(str)
    wrong_type.to_parquet(landing / "batch-wrongtype.parquet", index=False)
    generate_batch(11, 200).drop(columns=["region", "is_fraud"]).to_parquet(
        landing / "batch-missing.parquet", index=False
    )
    (landing / "batch-empty.parquet").write_bytes(b"")
    (landing / "batch-text.parquet").write_text("transaction_id,amount\nx,1\n")
    # Values that passed every check once and then broke training or the holdout:
    generate_batch(12, 200).assign(amount=float("inf")).to_parquet(
        landing / "batch-inf.parquet", index=False)
    generate_batch(13, 200).assign(transaction_id="t-1").to_parquet(
        landing / "batch-sameid.parquet", index=False)


def _check_details(instance, batch):
    evaluations = {}
    for name in CHECK_NAMES:
        key = dg.AssetCheckKey(dg.AssetKey("landed_batch"), name)
        records = instance.event_log_storage.get_asset_check_execution_history(key, limit=20)
        for record in records:
            evaluation = record.event.dagster_event.event_specific_data
            if not isinstance(evaluation, dg.AssetCheckEvaluation):
                continue  # planned, never evaluated: skipped
            if record.event.dagster_event.partition == batch or (
                evaluation.metadata["file"].value.endswith(f"{batch}.parquet")
            ):
                evaluations[name] = evaluation
                break
    return evaluations


@pytest.fixture
def landing(settings):
    write_batches(settings.landing_dir, batches=3, rows=1200)
    _land_bad_batches(settings.landing_dir)
    return settings


def test_malformed_batches_fail_blocking_checks_and_never_reach_training(landing, instance):
    defs = build_definitions(landing)
    before = sorted(p.name for p in landing.landing_dir.iterdir())
    summary = ingest_landed(defs, instance)

    assert summary.batches_ingested == ["batch-00000", "batch-00001", "batch-00002"]
    assert summary.batches_rejected == {
        "batch-inf": ["ranges"],
        "batch-sameid": ["ids"],
        # The checks a failed schema stopped did not run: skipped, not failed.
        "batch-empty": ["schema"],
        "batch-missing": ["schema"],
        "batch-text": ["schema"],
        "batch-wrongtype": ["schema"],
    }
    details = _check_details(instance, "batch-wrongtype")
    assert details["schema"].severity == dg.AssetCheckSeverity.ERROR
    assert all(spec.blocking for spec in landed_batch.check_specs)
    assert "column 'amount' must be numeric" in details["schema"].metadata["details"].value
    missing = _check_details(instance, "batch-missing")["schema"].metadata["details"].value
    # A missing label column is not a finding (the payments spec says labels: either); a
    # missing feature is, naming the spec field. The checks it stopped say they did not run.
    assert "batch-missing.parquet: missing column 'region' (spec field segment_columns)" in missing
    assert set(_check_details(instance, "batch-missing")) == {"schema"}  # the rest: skipped
    assert batch_findings(instance, "batch-missing") == [
        "batch-missing.parquet: missing column 'region' (spec field segment_columns)"]
    assert batch_findings(instance, "batch-00000") == []
    text = _check_details(instance, "batch-text")["schema"].metadata["details"].value
    assert "batch-text.parquet: cannot be read as parquet" in text
    inf = _check_details(instance, "batch-inf")["ranges"].metadata["details"].value
    assert "batch-inf.parquet: column 'amount' has 200 non-finite value(s) (200 +inf, 0 -inf)" in inf
    same = _check_details(instance, "batch-sameid")["ids"].metadata["details"].value
    assert "batch-sameid.parquet: id column 'transaction_id' has 199 duplicated value(s), e.g. ['t-1']" \
        in same

    # Nothing curated for a bad batch; the landed files are all still there.
    assert not (landing.values_dir / "landed_batch" / "batch-wrongtype.parquet").exists()
    assert (landing.values_dir / "landed_batch" / "batch-00001.parquet").exists()
    assert sorted(p.name for p in landing.landing_dir.iterdir()) == before

    result = train_evaluate_promote(defs, instance)
    training = result.output_for_node("training_set")
    assert training.batches == ["batch-00000", "batch-00001", "batch-00002"]
    assert set(training.excluded_batches) == {
        "batch-empty", "batch-missing", "batch-text", "batch-wrongtype", "batch-inf", "batch-sameid"
    }
    assert training.excluded_batches["batch-missing"].startswith("failed checks: schema")
    assert set(training.train["batch_id"]) | set(training.holdout["batch_id"]) == set(training.batches)


def test_only_bad_batches_means_no_training_and_nothing_downstream(settings, instance):
    settings.landing_dir.mkdir(parents=True)
    _land_bad_batches(settings.landing_dir)
    defs = build_definitions(settings)
    assert ingest_landed(defs, instance).batches_ingested == []
    job = defs.resolve_job_def("train_evaluate_promote")
    result = job.execute_in_process(instance=instance, raise_on_error=False)
    assert not result.success
    failure = next(e for e in result.all_events if e.is_step_failure)
    assert failure.step_key == "training_set"
    message = failure.event_specific_data.error.message
    assert "no valid ingested batch to train on" in message
    assert "batch-text" in message
    for asset in ("model_sklearn", "model_torch", "production_model"):
        assert instance.fetch_materializations(dg.AssetKey(asset), limit=1).records == []


def _range_run(defs, instance, first, last, job="ingest_batch"):
    """What the landing sensor asks for: one run over a range of batch partitions."""
    return defs.resolve_job_def(job).execute_in_process(
        instance=instance, raise_on_error=False,
        tags={"dagster/asset_partition_range_start": first,
              "dagster/asset_partition_range_end": last})


def _check_status(instance, batch, name):
    from dagster._core.loader import LoadingContextForTest
    from dagster._core.storage.asset_check_execution_record import (
        AssetCheckExecutionResolvedStatus,
    )

    key = dg.AssetCheckKey(landed_batch.key, name)
    (record,) = [r for r in instance.event_log_storage.get_asset_check_execution_history(
        key, limit=50) if r.partition == batch][:1] or [None]
    assert record is not None, f"no {name} record for {batch}"
    import asyncio

    status = asyncio.run(record.resolve_status(LoadingContextForTest(instance)))
    assert isinstance(status, AssetCheckExecutionResolvedStatus)
    return status.value


def test_a_rejected_batch_neither_fails_nor_hides_the_others_in_its_run(landing, instance):
    """One run ingests a range of batches: the good ones are stored and pass, the rejected
    one is marked by failed per-batch checks, a REJECTED verdict and a run tag; the run is
    green; the checks its schema failure stopped show as skipped."""
    defs = build_definitions(landing)
    keys = sorted(defs.resources["dataset"].batch_files())
    instance.add_dynamic_partitions("batches", keys)
    result = _range_run(defs, instance, keys[0], keys[-1])
    assert result.success
    assert instance.get_materialized_partitions(landed_batch.key) == set(keys)
    run = instance.get_run_by_id(result.run_id)
    rejected = run.tags["unified-ai/rejected-batches"].split(", ")
    assert sorted(rejected) == ["batch-empty", "batch-inf", "batch-missing", "batch-sameid",
                                "batch-text", "batch-wrongtype"]
    assert _check_status(instance, "batch-00001", "nulls") == "SUCCEEDED"
    assert _check_status(instance, "batch-missing", "schema") == "FAILED"
    assert _check_status(instance, "batch-missing", "nulls") == "SKIPPED"
    assert _check_status(instance, "batch-inf", "ranges") == "FAILED"
    assert _check_status(instance, "batch-inf", "label") == "SUCCEEDED"
    missing = instance.fetch_materializations(dg.AssetRecordsFilter(
        asset_key=landed_batch.key, asset_partitions=["batch-missing"]), limit=1).records[0]
    verdict = missing.asset_materialization.metadata["verdict"].value
    assert verdict.startswith("REJECTED: failed checks schema; not run: ids, nulls, ranges, label")
    # Fail closed: a rejected batch is never curated, profiled or trained on.
    from unified_assets.assets.data import batch_passed

    assert not (landing.values_dir / "landed_batch" / "batch-missing.parquet").exists()
    assert not batch_passed(instance, "batch-missing")
    assert batch_passed(instance, "batch-00002")

    # Drift is judged for a range of batches in one run too, one materialization each.
    from unified_assets.assets.monitoring import batch_drift

    drift = dg.materialize([landed_batch, batch_drift], selection=[batch_drift], instance=instance,
                           resources={k: defs.resources[k] for k in
                                      ("dataset", "values_io_manager", "mlflow_registry",
                                       "policy")},
                           tags={"dagster/asset_partition_range_start": "batch-00000",
                                 "dagster/asset_partition_range_end": "batch-00002"})
    assert drift.success
    assert instance.get_materialized_partitions(dg.AssetKey("batch_drift")) == {
        "batch-00000", "batch-00001", "batch-00002"}


def test_rejected_batch_looks_rejected_and_automation_skips_its_monitoring(landing, instance):
    defs = build_definitions(landing)
    tick = dg.evaluate_automation_conditions(defs=defs, instance=instance)
    summary = ingest_landed(defs, instance)
    assert "batch-missing" in summary.batches_rejected
    # A rejected batch is marked, not a crash: its run is green with the batch named in a
    # tag, its schema check failed, and its materialization says rejected before anything.
    # Landed together, the batches were ingested in one range run (as the landing sensor does).
    (run,) = [r.dagster_run for r in instance.get_run_records(dg.RunsFilter(
        job_name="ingest_batch")) if "batch-missing" in r.dagster_run.tags.get(
            "unified-ai/rejected-batches", "")]
    assert run.status == dg.DagsterRunStatus.SUCCESS
    assert "batch-00000" not in run.tags["unified-ai/rejected-batches"]
    assert _check_status(instance, "batch-missing", "schema") == "FAILED"
    record = instance.fetch_materializations(dg.AssetRecordsFilter(
        asset_key=landed_batch.key, asset_partitions=["batch-missing"]), limit=1).records[0]
    metadata = record.asset_materialization.metadata
    assert next(iter(metadata)) == "verdict"
    assert metadata["verdict"].value.startswith("REJECTED")
    good = instance.fetch_materializations(dg.AssetRecordsFilter(
        asset_key=landed_batch.key, asset_partitions=["batch-00000"]), limit=1).records[0]
    assert good.asset_materialization.metadata["verdict"].value.startswith("passed")
    # The same run judged drift for the good batches only: no "has no profile", no failure.
    judged = instance.fetch_materializations(dg.AssetKey("batch_drift"), limit=10).records
    assert {r.asset_materialization.partition for r in judged} == {
        "batch-00000", "batch-00001", "batch-00002"}
    assert {r.run_id for r in judged} == {run.run_id}
    # Automation asks for no monitoring: the good batches are judged, the rejected one never.
    tick = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=tick.cursor)
    assert tick.get_requested_partitions(dg.AssetKey("batch_drift")) == set()
    # Launched by hand on the rejected batch, monitoring refuses in one line naming it.
    by_hand = defs.resolve_implicit_global_asset_job_def().get_subset(
        asset_selection={dg.AssetKey("batch_drift")}).execute_in_process(
        instance=instance, partition_key="batch-missing", raise_on_error=False)
    assert not by_hand.success
    (failure,) = [e for e in by_hand.all_events if e.is_step_failure]
    assert "batch-missing have no profile: they failed their quality checks" in \
        failure.event_specific_data.error.message
