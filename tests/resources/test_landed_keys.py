"""Partition keys for landed files: one key per exact file name (never shared), readable,
stable, valid for Dagster, and the same for a batch and its labels file."""

import itertools

import dagster as dg
import pytest

from resources.dataset import DatasetResource, batch_key
from unified_assets.ml.generator import generate_batch
from unified_assets.partitions import BATCHES

COLLIDED_BEFORE = [
    ("batch.v1.parquet", "batch.v2.parquet"),
    ("my batch.parquet", "my_batch.parquet"),
    ("bätch.parquet", "b_tch.parquet"),
    ("batch.parquet", "batch.parquet.parquet"),
    ("a/b.parquet", "a_b.parquet"),
]


@pytest.mark.parametrize("name, key", [
    ("batch_0003.parquet", "batch_0003"),
    ("batch-00000.parquet", "batch-00000"),
    ("date=2024-01-01.parquet", "date=2024-01-01"),
])
def test_simple_names_keep_their_key(name, key):
    assert batch_key(name) == key


def test_simple_names_with_the_spec_extension_keep_their_key():
    assert batch_key("biopsies-000.csv", ".csv") == "biopsies-000"


@pytest.mark.parametrize("first, second", COLLIDED_BEFORE)
def test_names_that_used_to_share_a_key_get_distinct_readable_keys(first, second):
    assert batch_key(first) != batch_key(second)
    assert batch_key("batch.v1.parquet").startswith("batch_v1.")
    assert batch_key("my batch.parquet").startswith("my_batch.")
    assert batch_key("bätch.parquet").startswith("batch.")


def test_keys_are_injective_stable_and_valid_partition_keys():
    parts = ["batch", "Batch", "b a", "b_a", "b.a", "bä", "b_", "b-", "b=1", "b..", "b,c", "b|c",
             "日本", "b\tc", "b\nc", "x" * 200, "-", "_", "a" * 99 + "b", "a" * 99 + "c"]
    exts = ["", ".parquet", ".PARQUET", ".parquet.parquet", ".csv", ".parquet.partial2"]
    names = sorted({"".join(p) for p in itertools.product(parts, exts)} - {""})
    keys = {name: batch_key(name) for name in names}
    assert len(set(keys.values())) == len(names), "two names share a key"
    assert keys == {name: batch_key(name) for name in names}, "keys are stable"
    for key in keys.values():
        assert key and len(key) <= 120
        assert "..." not in key and "/" not in key and "," not in key and "|" not in key
        assert key.isascii() and key.isprintable()
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(BATCHES.name, list(keys.values()))
        assert set(instance.get_dynamic_partitions(BATCHES.name)) == set(keys.values())


def test_the_landing_zone_lists_every_file_and_labels_share_their_batch_key(tmp_path):
    landing = tmp_path / "landing"
    (landing / "labels").mkdir(parents=True)
    names = [n for pair in COLLIDED_BEFORE[:3] for n in pair]
    for index, name in enumerate(names):
        generate_batch(index, 20).to_parquet(landing / name, index=False)
        generate_batch(index, 20)[["transaction_id", "is_fraud"]].to_parquet(
            landing / "labels" / name, index=False)
    dataset = DatasetResource(landing_dir=str(landing))
    batches, labels = dataset.batch_files(), dataset.label_files()
    assert sorted(f.uri for f in batches.values()) == sorted(str(landing / n) for n in names)
    assert set(batches) == set(labels) == {batch_key(n) for n in names}
    for key, landed in batches.items():
        assert landed.key == key and labels[key].uri.endswith("/labels/" + landed.uri.rsplit("/", 1)[1])


def test_keys_use_the_spec_extension_so_a_csv_dataset_keeps_plain_keys(tmp_path):
    import yaml

    from unified_assets.ml.dataset_spec import PAYMENTS_SPEC_DATA

    (tmp_path / "batches").mkdir()
    for name in ("biopsies-000.csv", "biopsies-000.v2.csv"):
        generate_batch(0, 10).to_csv(tmp_path / "batches" / name, index=False)
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump({**PAYMENTS_SPEC_DATA, "source": {"path": "batches", "format": "csv"}}))
    keys = list(DatasetResource(spec_path=str(spec)).batch_files())
    assert keys == ["biopsies-000", batch_key("biopsies-000.v2.csv", ".csv")]
    assert keys[1].startswith("biopsies-000_v2.")


def test_two_names_on_one_key_is_an_error_naming_both(tmp_path, monkeypatch):
    import resources.dataset as module

    (tmp_path / "landing").mkdir()
    for name in ("a.parquet", "b.parquet"):
        generate_batch(0, 10).to_parquet(tmp_path / "landing" / name, index=False)
    monkeypatch.setattr(module, "batch_key", lambda name, extension: "same")
    with pytest.raises(dg.Failure, match=r"a\.parquet and .*b\.parquet map to one partition key 'same'"):
        DatasetResource(landing_dir=str(tmp_path / "landing")).batch_files()
