"""The labels sensor: a labels file is matched again whenever it changes or its batch is
re-landed as a new version; stored labels matched to another batch version are never used;
a labels file that failed to read or to be stored is tried again."""

import dagster as dg
import pytest

import sensors.landing as landing
from tests.resources.test_parquet_io import fill_values_disk
from tests.sensors.test_landing_sensor import launch, skipped, tick
from unified_assets.assets.labels import is_trainable, labelled_frame
from unified_assets.definitions import build_definitions
from unified_assets.ml.generator import generate_batch

BATCH = "batch-00004"
LABELS_ONLY = {dg.AssetKey("batch_labels")}


@pytest.fixture
def unlabelled(settings, instance):
    """One batch landed without its labels and ingested."""
    (settings.landing_dir / "labels").mkdir(parents=True)
    truth = generate_batch(4, 60)
    truth.drop(columns=["is_fraud"]).to_parquet(settings.landing_dir / f"{BATCH}.parquet", index=False)
    defs = build_definitions(settings)
    assert launch(defs, instance, tick(defs, instance))[0].success
    return defs, truth


def _land_labels(settings, frame) -> None:
    frame[["transaction_id", "is_fraud"]].to_parquet(
        settings.landing_dir / "labels" / f"{BATCH}.parquet", index=False)


def _labels_tick(defs, instance, cursor=None):
    return tick(defs, instance, cursor, name="labels_landing_sensor")


def _launch_labels(defs, instance, result):
    return launch(defs, instance, result, job="ingest_labels", asset_selection=LABELS_ONLY)


def test_relanded_labels_and_a_relanded_batch_are_matched_again(settings, instance, unlabelled):
    defs, truth = unlabelled
    values, dataset = defs.resources["values_io_manager"], defs.resources["dataset"]
    assert not is_trainable(instance, BATCH)

    _land_labels(settings, truth)
    first = _labels_tick(defs, instance)
    (request,) = first.run_requests
    labels_version = dataset.label_files()[BATCH].version
    batch_version = dataset.batch_files()[BATCH].version
    assert request.run_key == f"labels:{BATCH}:{labels_version}:{batch_version}"
    assert request.tags["unified-ai/labels-version"] == labels_version
    assert request.tags["unified-ai/batch-version"] == batch_version
    assert _launch_labels(defs, instance, first)[0].success
    assert is_trainable(instance, BATCH)
    assert "no new" in skipped(_labels_tick(defs, instance, first.cursor))

    flipped = truth.assign(is_fraud=1 - truth["is_fraud"])
    _land_labels(settings, flipped.iloc[::-1])
    second = _labels_tick(defs, instance, first.cursor)
    (again,) = second.run_requests
    assert again.run_key != request.run_key
    assert _launch_labels(defs, instance, second)[0].success
    relabelled = labelled_frame(instance, values, BATCH, "is_fraud")
    assert relabelled["is_fraud"].tolist() == flipped["is_fraud"].tolist()

    # The batch is re-landed (its rows in another order): the stored labels were matched to
    # the old version, so they are not used until they are matched again.
    truth.drop(columns=["is_fraud"]).iloc[::-1].to_parquet(
        settings.landing_dir / f"{BATCH}.parquet", index=False)
    assert launch(defs, instance, tick(defs, instance, None))[0].success
    assert not is_trainable(instance, BATCH)
    with pytest.raises(dg.Failure, match="matched to version"):
        labelled_frame(instance, values, BATCH, "is_fraud")
    third = _labels_tick(defs, instance, second.cursor)
    (rematch,) = third.run_requests
    assert rematch.tags["unified-ai/batch-version"] == dataset.batch_files()[BATCH].version
    assert _launch_labels(defs, instance, third)[0].success
    assert is_trainable(instance, BATCH)
    relabelled = labelled_frame(instance, values, BATCH, "is_fraud")
    assert relabelled["is_fraud"].tolist() == flipped["is_fraud"].iloc[::-1].tolist()


def test_labels_that_failed_to_read_or_to_be_stored_are_tried_again(
        settings, instance, unlabelled, monkeypatch):
    defs, truth = unlabelled
    _land_labels(settings, truth)
    first = _labels_tick(defs, instance)
    assert _launch_labels(defs, instance, first)[0].success
    assert is_trainable(instance, BATCH)

    # A labels file read while still being copied: rejected, and the labels stored before
    # are no longer the batch's truth.
    path = settings.landing_dir / "labels" / f"{BATCH}.parquet"
    content = path.read_bytes()
    path.write_bytes(content[: len(content) // 2])
    second = _labels_tick(defs, instance, first.cursor)
    (run,) = _launch_labels(defs, instance, second)
    checks = {e.check_name: e.passed for e in run.get_asset_check_evaluations()}
    assert checks == {"labels_match_batch": False}
    assert not is_trainable(instance, BATCH)
    skipped(_labels_tick(defs, instance, second.cursor))

    # The copy completes while the disk is full: the run fails and is retried.
    path.write_bytes(content)
    third = _labels_tick(defs, instance, second.cursor)
    fill_values_disk(monkeypatch, full=lambda p: "/batch_labels/" in p and BATCH in p)
    (failed,) = _launch_labels(defs, instance, third)
    assert not failed.success
    assert not is_trainable(instance, BATCH)
    monkeypatch.undo()
    monkeypatch.setattr(landing, "RETRY_BACKOFF_SECONDS", 0.0)
    retry = _labels_tick(defs, instance, third.cursor)
    (request,) = retry.run_requests
    assert request.run_key == f"{third.run_requests[0].run_key}:2"
    assert _launch_labels(defs, instance, retry)[0].success
    assert is_trainable(instance, BATCH)
