"""Scenario driven by sensor ticks: clean batches -> champion; more clean batches -> no
retrain; drifted batches -> exactly one retrain naming them, on the `batch_drift` decisions
their ingestion run made; a replayed tick -> nothing; batches drifting one tick apart -> one retrain in
flight and at most one pending that holds the later evidence."""

import dagster as dg
import pytest

from tests.states import Recipe, first_champion
from unified_assets.definitions import build_definitions
from unified_assets.lifecycle import ingest_landed, train_evaluate_promote
from unified_assets.ml.generator import DriftSpec, write_batches
from unified_assets.placement import decisions_from_tags

RESOURCES = ("dataset", "store", "mlflow_registry", "policy")
pytestmark = pytest.mark.slow  # full lifecycles
# The tests sharing CHAMPION run on one xdist worker, which builds it once.
SHARES_CHAMPION = pytest.mark.xdist_group("drift-retrain:champion")


# Three clean batches and a first champion: built once per session, restored per test.
CHAMPION = Recipe("drift:first-champion", first_champion(batches=3, rows=1500))


@pytest.fixture
def champion(states):
    with states.use(CHAMPION) as state:
        yield state


def _tick(defs, instance, cursor=None):
    sensor = defs.resolve_sensor_def("drift_retrain_sensor")
    context = dg.build_sensor_context(instance=instance, cursor=cursor, definitions=defs,
                                      resources={k: defs.resources[k] for k in RESOURCES})
    return sensor(context)


def _runs_after(instance, action, *args) -> list[str]:
    """The ids of the runs `action` started."""
    before = {r.dagster_run.run_id for r in instance.get_run_records()}
    action(*args, instance)
    return [r.dagster_run.run_id for r in instance.get_run_records()
            if r.dagster_run.run_id not in before]


def test_drift_triggers_exactly_one_retrain_naming_the_batches(settings, instance):
    write_batches(settings.landing_dir, batches=2, rows=2000)
    defs = build_definitions(settings)
    ingest_landed(defs, instance)
    waiting = _tick(defs, instance)
    # Nothing requested; the reason gives the count against the policy's minimum.
    assert isinstance(waiting, dg.SkipReason) and "2 of 3" in waiting.skip_message
    write_batches(settings.landing_dir, batches=1, rows=2000, first_batch=2)
    ingest_landed(defs, instance)
    # One first training at a time: while one is running, the sensor waits.
    queued = instance.create_run_for_job(defs.resolve_job_def("train_evaluate_promote"),
                                         status=dg.DagsterRunStatus.STARTED)
    busy = _tick(defs, instance)
    assert isinstance(busy, dg.SkipReason) and "train_evaluate_promote" in busy.skip_message
    instance.report_run_canceled(queued)
    bootstrap = _tick(defs, instance)
    (first,) = bootstrap.run_requests
    assert first.tags["unified-ai/trigger"] == "bootstrap"
    assert first.run_key == "bootstrap:batch-00000,batch-00001,batch-00002"
    assert "3 labelled batches" in first.tags["unified-ai/reason"]
    assert train_evaluate_promote(defs, instance).success

    write_batches(settings.landing_dir, batches=1, rows=2000, first_batch=3)
    ingest_landed(defs, instance)
    # The ingestion run judged the batch against the champion: nothing is left to automation.
    quiet = _tick(defs, instance)
    assert quiet.run_requests == [] and "no retrain-ready drift" in quiet.skip_reason.skip_message

    drift = DriftSpec(start_batch=4, covariate_shift=3.0, label_shift=1.0)
    write_batches(settings.landing_dir, batches=2, rows=2000, first_batch=4, drift=drift)
    (ingestion,) = _runs_after(instance, ingest_landed, defs)
    # Evidence before action, without a hop: the ingestion run itself judged the batches
    # (batch_drift is a step of it), so the next tick retrains on evidence in the catalog.
    loud = _tick(defs, instance, cursor=quiet.cursor)
    (request,) = loud.run_requests
    assert request.tags["unified-ai/trigger"] == "drift"
    assert request.tags["unified-ai/drift-batches"] == "batch-00004,batch-00005"
    assert request.run_key == "drift-retrain:batch-00004,batch-00005"
    assert "amount" in request.tags["unified-ai/reason"]
    assert "(batch_drift)" in request.tags["unified-ai/reason"]
    # The reason links the evidence already in the catalog: batch_drift's runs per batch.
    evidence = {r.asset_materialization.partition: r.run_id for r in instance.fetch_materializations(
        dg.AssetKey("batch_drift"), limit=10).records}
    assert request.tags["unified-ai/evidence"] == ",".join(
        f"batch_drift[{b}]@{evidence[b][:8]}" for b in ("batch-00004", "batch-00005"))
    assert {evidence["batch-00004"], evidence["batch-00005"]} == {ingestion}
    plan = decisions_from_tags(request.tags)
    assert plan["model_torch"].target == "cpu" and plan["model_torch"].fallback != "none"

    replay = _tick(defs, instance, cursor=loud.cursor)
    assert isinstance(replay, dg.SkipReason), "the same evidence never retrains twice"


@SHARES_CHAMPION
def test_batch_drift_asset_shows_per_column_verdicts(champion):
    settings, instance = champion.settings, champion.instance
    defs = build_definitions(settings)
    tick = dg.evaluate_automation_conditions(defs=defs, instance=instance)
    write_batches(settings.landing_dir, batches=1, rows=1500, first_batch=3,
                  drift=DriftSpec(start_batch=3, covariate_shift=3.0))
    (ingestion,) = _runs_after(instance, ingest_landed, defs)
    # The ingestion run judged the batch; declarative automation carries it on to the report
    # only (it never judges a batch twice).
    tick = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=tick.cursor)
    assert tick.get_requested_partitions(dg.AssetKey("batch_drift")) == set()
    assert tick.get_requested_partitions(dg.AssetKey("drift_report")) == {"batch-00003"}
    record = instance.fetch_materializations(dg.AssetKey("batch_drift"), limit=1).records[0]
    assert (record.run_id, record.asset_materialization.partition) == (ingestion, "batch-00003")
    metadata = record.asset_materialization.metadata
    assert metadata["dataset_drift"].value is True
    assert metadata["reference_batches"].value == ["batch-00000", "batch-00001", "batch-00002"]
    assert "amount" in metadata["drifted_columns"].value
    assert "| amount | numeric | Wasserstein distance (normed) |" in metadata["columns"].value
    assert metadata["share_of_drifted_columns"].value >= 0.5


def test_readme_drift_example_retrains_to_a_green_promotion(settings, instance):
    """README "Using it": the seeded batches (scripts/dev.sh), then
    `generate --batches 4 --first-batch 6 --drift-from 6 --covariate-shift 3.0 --label-shift 0.5`
    (about 35% positives once drifted). Under an absolute Brier ceiling the retrain was red and
    promoted nothing, although the retrained model ranked and calibrated well; judged by the
    skill over the base-rate forecast it is promoted (or held for a reason a person accepts)."""
    write_batches(settings.landing_dir, batches=6, rows=4000)
    defs = build_definitions(settings)
    ingest_landed(defs, instance)
    first = train_evaluate_promote(defs, instance)
    assert first.success
    first_champion = first.output_for_node("production_model")["champion"]
    drift = DriftSpec(start_batch=6, covariate_shift=3.0, label_shift=0.5)
    write_batches(settings.landing_dir, batches=4, rows=5000, first_batch=6, drift=drift)
    ingest_landed(defs, instance)
    retrain = train_evaluate_promote(defs, instance)
    assert retrain.success, [e.message for e in retrain.all_events if e.is_failure]
    reports = [retrain.output_for_node(f"evaluation_{f}") for f in ("sklearn", "torch")]
    overall = reports[0].overall
    assert overall["positives"] / overall["rows"] > 0.2, "many positives in the drifted window"
    assert all(r.overall["brier"] > 0.08 for r in reports), "the old ceiling held both back"
    assert all(r.overall["brier_skill"] > 0.3 and r.passed_gates for r in reports), reports
    challenger = retrain.output_for_node("challenger")
    assert "passed every gate and has the best" in challenger.reason, challenger.reason
    approval = retrain.output_for_node("approval")
    assert approval.approval_state == "approved", approval.approval
    production = retrain.output_for_node("production_model")
    assert production["action"] == "promote"
    assert production["champion"] == challenger.version != first_champion


def _submit(defs, instance, result):
    """What the daemon does with a tick's requests: a run waiting in the queue each, job tags
    included (NOT_STARTED: a QUEUED run needs a code-location origin this test has not)."""
    job = defs.resolve_job_def("train_evaluate_promote")
    for request in result.run_requests:
        instance.create_run_for_job(job, status=dg.DagsterRunStatus.NOT_STARTED,
                                    tags={**job.run_tags, **request.tags})


def _dequeue(instance):
    """The run queue with `unified-ai/retrain` limited to 1: start the oldest queued retrain
    only when none runs."""
    def runs(*statuses):
        return [r.dagster_run for r in instance.get_run_records(
            dg.RunsFilter(job_name="train_evaluate_promote", statuses=list(statuses)))]
    waiting = (dg.DagsterRunStatus.QUEUED, dg.DagsterRunStatus.NOT_STARTED)
    if not runs(dg.DagsterRunStatus.STARTED) and runs(*waiting):
        oldest = runs(*waiting)[-1]
        instance.handle_run_event(oldest.run_id, dg.DagsterEvent(
            event_type_value=dg.DagsterEventType.RUN_START.value, job_name=oldest.job_name))
    return runs(dg.DagsterRunStatus.STARTED), runs(*waiting)


@SHARES_CHAMPION
def test_batches_drifting_one_tick_apart_coalesce_into_one_pending_retrain(champion):
    settings, instance = champion.settings, champion.instance
    defs = build_definitions(settings)
    drift = DriftSpec(start_batch=3, covariate_shift=3.0)
    cursor, names = None, [f"batch-0000{i}" for i in range(3, 7)]
    for index, batch in enumerate(names):
        write_batches(settings.landing_dir, batches=1, rows=1500, first_batch=3 + index, drift=drift)
        ingest_landed(defs, instance)  # judged in the same run
        result = _tick(defs, instance, cursor)
        cursor = result.cursor
        _submit(defs, instance, result)
        running, pending = _dequeue(instance)
        assert len(running) <= 1 and len(pending) <= 1, (batch, running, pending)
    (running,), (pending,) = running, pending
    assert running.tags["unified-ai/drift-batches"] == "batch-00003"
    # The later evidence folded into the one pending run, which trains on all of it.
    assert pending.tags["unified-ai/drift-batches"] == "batch-00004,batch-00005,batch-00006"
    assert all(b in pending.tags["unified-ai/reason"] for b in names[1:])
    assert pending.tags["unified-ai/retrain"] == "train_evaluate_promote"
