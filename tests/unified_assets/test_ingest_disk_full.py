"""Disk full during ingestion: the run fails naming the value, the path and the error, records
no materialization (so nothing reads as passed) and leaves no temp file, and the landing
sensor retries it (new run key per attempt, bounded, saying so) once space returns."""

import dagster as dg
import pytest

import sensors.landing as landing
from tests.resources.test_parquet_io import fill_values_disk as fill_disk
from tests.sensors.test_landing_sensor import launch, skipped, tick
from unified_assets.assets.data import batch_passed, batch_record
from unified_assets.definitions import build_definitions
from unified_assets.ml.generator import generate_batch, write_batches

CURATED = "batch-00000.parquet"
LANDED = dg.AssetKey("landed_batch")


@pytest.fixture
def landed(settings):
    write_batches(settings.landing_dir, batches=1, rows=60)
    return build_definitions(settings)


def _temp_files(settings):
    return [p for p in settings.values_dir.rglob("*") if p.is_file() and ".tmp" in p.name]


def _error(run):
    """The step failure's message with its causes (Dagster wraps the IO manager's error)."""
    error = next(e for e in run.all_events if e.is_step_failure).event_specific_data.error
    messages = []
    while error is not None:
        messages.append(error.message)
        error = error.cause
    return "\n".join(messages)


def test_disk_full_fails_the_run_without_a_passed_report_and_is_retried_when_space_returns(
        settings, instance, landed, monkeypatch):
    values = landed.resources["values_io_manager"]
    first = tick(landed, instance)
    (request,) = first.run_requests

    fill_disk(monkeypatch, full=lambda path: CURATED in path)
    (run,) = launch(landed, instance, first)
    assert not run.success
    message = _error(run)
    assert "landed_batch partition 'batch-00000'" in message and str(settings.values_dir) in message
    assert "No space left on device" in message and "Errno 28" in message
    assert not batch_passed(instance, "batch-00000")
    assert _temp_files(settings) == []
    assert not values.exists(LANDED, "batch-00000")

    monkeypatch.setattr(landing, "RETRY_BACKOFF_SECONDS", 3600.0)
    waiting = skipped(tick(landed, instance, first.cursor))
    assert "batch-00000" in waiting and "attempt 2" in waiting

    monkeypatch.undo()  # space returns
    monkeypatch.setattr(landing, "RETRY_BACKOFF_SECONDS", 0.0)
    retry = tick(landed, instance, first.cursor)
    (again,) = retry.run_requests
    assert again.run_key == f"{request.run_key}:2" and again.tags["unified-ai/attempt"] == "2"
    assert again.tags["unified-ai/trigger"] == "retry"
    (run,) = launch(landed, instance, retry)
    assert run.success
    assert batch_passed(instance, "batch-00000")
    assert "no new or changed batch" in skipped(tick(landed, instance, retry.cursor))


def test_a_new_version_that_fails_to_store_leaves_the_older_version_whole(
        settings, instance, landed, monkeypatch):
    values = landed.resources["values_io_manager"]
    first = tick(landed, instance)
    assert launch(landed, instance, first)[0].success
    old = batch_record(instance, "batch-00000").version

    generate_batch(9, 30).to_parquet(settings.landing_dir / CURATED, index=False)
    second = tick(landed, instance, first.cursor)
    fill_disk(monkeypatch, full=lambda path: CURATED in path)
    (run,) = launch(landed, instance, second)
    monkeypatch.undo()
    assert not run.success and "landed_batch partition 'batch-00000'" in _error(run)
    # The record and the value still describe the same (older) version.
    assert batch_record(instance, "batch-00000").version == old
    assert len(values.load(LANDED, "batch-00000")) == 60
    assert _temp_files(settings) == []


def test_retries_are_bounded_and_reported_and_a_new_version_starts_over(
        settings, instance, landed, monkeypatch):
    monkeypatch.setattr(landing, "RETRY_BACKOFF_SECONDS", 0.0)
    monkeypatch.setattr(landing, "MAX_ATTEMPTS", 2)
    fill_disk(monkeypatch, full=lambda path: CURATED in path)
    first = tick(landed, instance)
    assert not launch(landed, instance, first)[0].success
    second = tick(landed, instance, first.cursor)
    assert [r.run_key.rsplit(":", 1)[1] for r in second.run_requests] == ["2"]
    assert not launch(landed, instance, second)[0].success

    gave_up = tick(landed, instance, second.cursor)
    message = skipped(gave_up)
    assert "gave up on batch-00000" in message and "2 failed ingestion attempts" in message
    assert str(settings.landing_dir / CURATED) in message
    assert "no new or changed batch" in skipped(tick(landed, instance, gave_up.cursor))

    monkeypatch.setattr(landing, "MAX_ATTEMPTS", 5)
    generate_batch(5, 60).to_parquet(settings.landing_dir / CURATED, index=False)  # re-landed
    (fresh,) = tick(landed, instance, gave_up.cursor).run_requests
    assert fresh.tags["unified-ai/attempt"] == "1"


def test_a_relanded_version_that_fails_its_checks_is_not_passed_and_keeps_no_value(
        settings, instance, landed):
    values = landed.resources["values_io_manager"]
    first = tick(landed, instance)
    assert launch(landed, instance, first)[0].success and batch_passed(instance, "batch-00000")
    (settings.landing_dir / CURATED).write_bytes(b"not parquet")
    # Rejected, not broken: a green run with the batch marked (failed checks, REJECTED).
    assert launch(landed, instance, tick(landed, instance, first.cursor))[0].success
    assert not values.exists(LANDED, "batch-00000")  # the earlier version's rows are not read
    assert (settings.landing_dir / CURATED).exists()  # the landed file is kept
    assert not batch_passed(instance, "batch-00000")


@pytest.mark.parametrize("raw", ["soon", "-5", "nan", "inf"])
def test_ingest_retry_backoff_from_the_environment_refuses_a_bad_value(raw: str):
    from unified_assets.settings import INGEST_RETRY_BACKOFF_ENV, ingest_retry_backoff_s

    with pytest.raises(ValueError, match=f"{INGEST_RETRY_BACKOFF_ENV}='{raw}' must be a number"):
        ingest_retry_backoff_s({INGEST_RETRY_BACKOFF_ENV: raw})


def test_ingest_retry_backoff_defaults_to_a_minute_and_reads_the_environment():
    from unified_assets.settings import INGEST_RETRY_BACKOFF_ENV, ingest_retry_backoff_s

    assert ingest_retry_backoff_s({}) == 60.0
    assert ingest_retry_backoff_s({INGEST_RETRY_BACKOFF_ENV: " 2.5 "}) == 2.5
    assert ingest_retry_backoff_s({INGEST_RETRY_BACKOFF_ENV: "0"}) == 0.0
