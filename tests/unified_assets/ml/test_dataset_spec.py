import pytest
import yaml

from unified_assets.ml.dataset_spec import (
    PAYMENTS_SPEC_DATA,
    DatasetSpecError,
    load_spec,
    parse_spec,
    payments_spec,
)


def _spec(**changes):
    data = {**PAYMENTS_SPEC_DATA, **changes}
    return {k: v for k, v in data.items() if v is not ...}


def test_payments_spec_roles(tmp_path):
    spec = payments_spec(tmp_path)
    assert spec.target == "is_fraud"
    assert spec.source.path == str(tmp_path)
    assert "region" in spec.required_columns and spec.required_columns[-1] == "is_fraud"
    assert spec.source.glob == "*.parquet"


@pytest.mark.parametrize(
    "changes, field",
    [
        ({"colour": "blue"}, "colour"),
        ({"target": ...}, "target"),
        ({"numeric_features": "amount"}, "numeric_features"),
        ({"source": {"path": "x", "format": "xlsx"}}, "source.format"),
        ({"max_null_fraction": 1.5}, "max_null_fraction"),
        ({"target": "amount"}, "target"),
        ({"segment_columns": ["is_fraud"]}, "segment_columns"),
        ({"ranges": {"channel": [0, 1]}}, "ranges.channel"),
        ({"ranges": {"amount": [5, 1]}}, "ranges.amount"),
        ({"numeric_features": [], "categorical_features": []}, "at least one feature"),
        ({"name": "bad name!"}, "name"),
    ],
)
def test_bad_spec_names_the_field(changes, field):
    with pytest.raises(DatasetSpecError) as error:
        parse_spec(_spec(**changes), origin="my-spec.yaml")
    assert "my-spec.yaml" in str(error.value)
    assert field in str(error.value)


def test_load_spec_resolves_source_relative_to_spec(tmp_path):
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(_spec(source={"path": "batches", "format": "csv"})))
    spec = load_spec(path)
    assert spec.source.path == str(tmp_path / "batches")
    assert spec.source.glob == "*.csv"


def test_load_spec_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(DatasetSpecError, match="not found"):
        load_spec(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed")
    with pytest.raises(DatasetSpecError, match="not valid YAML"):
        load_spec(bad)
    listing = tmp_path / "list.yaml"
    listing.write_text("- a\n- b\n")
    with pytest.raises(DatasetSpecError, match="expected a mapping"):
        load_spec(listing)
