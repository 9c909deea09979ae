"""A run over many batches lists the landing zone once, not once per batch: on a local folder
each listing stats every file (500 files x 100 batches per run was 50,000 stats and a quadratic
name comparison), on S3 each listing is billed LIST requests."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import pytest

from resources.dataset import DatasetResource
from unified_assets.definitions import build_definitions
from unified_assets.lifecycle import ingest_landed
from unified_assets.ml.generator import write_batches


@pytest.fixture
def listings(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every listing of the landing zone (the folder or prefix listed)."""
    seen: list[str] = []
    original = DatasetResource._list

    def counted(self, folder_uri: str):
        seen.append(folder_uri)
        return original(self, folder_uri)

    monkeypatch.setattr(DatasetResource, "_list", counted)
    return seen


def test_a_range_run_lists_the_landing_zone_once(settings, instance, listings):
    write_batches(settings.landing_dir, 6, 300, seed=3)
    defs = build_definitions(settings)
    listings.clear()
    summary = ingest_landed(defs, instance)  # lists once itself, then one run over the range
    assert len(summary.batches_ingested) == 6
    assert len(listings) == 2, listings


def test_unmatched_names_are_found_among_many_files(settings):
    write_batches(settings.landing_dir, 40, 20, seed=3)
    (settings.landing_dir / "notes.txt").write_text("not a batch")
    (settings.landing_dir / "export.csv").write_text("a\n1\n")
    with dg.build_resources({"dataset": build_definitions(settings).resources["dataset"]}) as r:
        files, unmatched = r.dataset.scan_batches()
    assert len(files) == 40
    assert unmatched == ["export.csv", "notes.txt"]


def test_a_batch_deleted_after_the_listing_names_its_key(settings, instance):
    write_batches(settings.landing_dir, 2, 50, seed=3)
    with dg.build_resources({"dataset": build_definitions(settings).resources["dataset"]}) as r:
        listed = r.dataset.batches(sorted(r.dataset.batch_files()))
        first = next(iter(listed.values()))
        Path(first.uri).unlink()
        with pytest.raises(dg.Failure, match=first.key):
            r.dataset.current(first)
        with pytest.raises(dg.Failure, match="batch 'nope' has no file"):
            r.dataset.batches(["nope"])
