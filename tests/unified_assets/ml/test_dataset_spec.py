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


def _write_spec(folder, source):
    path = folder / "spec.yaml"
    path.write_text(yaml.safe_dump(_spec(source=source)))
    return path


@pytest.mark.parametrize("source, field, value", [
    ({"path": "../../elsewhere"}, "source.path", "../../elsewhere"),
    ({"path": "/etc"}, "source.path", "/etc"),
    ({"path": "batches", "labels_path": "../labels"}, "source.labels_path", "../labels"),
    ({"path": "batches", "labels_path": "/etc"}, "source.labels_path", "/etc"),
    ({"path": "batches", "pattern": "../../**/*.csv"}, "source.pattern", "../../**/*.csv"),
    ({"path": "batches", "pattern": "sub/*.csv"}, "source.pattern", "sub/*.csv"),
    ({"path": "batches", "pattern": "**"}, "source.pattern", "**"),
    ({"path": "batches", "pattern": ".."}, "source.pattern", ".."),
])
def test_spec_paths_that_leave_the_spec_folder_are_refused_at_load(tmp_path, source, field, value):
    spec_dir = tmp_path / "project" / "specs"
    spec_dir.mkdir(parents=True)
    path = _write_spec(spec_dir, source)
    with pytest.raises(DatasetSpecError) as error:
        load_spec(path, landing_dir=tmp_path / "landing")
    message = str(error.value)
    assert str(path) in message and field in message and repr(value) in message, message


def test_a_symlink_out_of_the_spec_folder_is_refused(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (tmp_path / "specs").mkdir()
    (tmp_path / "specs" / "batches").symlink_to(outside)
    with pytest.raises(DatasetSpecError, match="source.path"):
        load_spec(_write_spec(tmp_path / "specs", {"path": "batches"}))


def test_spec_paths_inside_the_spec_folder_or_the_landing_zone_are_accepted(tmp_path):
    landing = tmp_path / "landing"
    (tmp_path / "specs").mkdir()
    inside = load_spec(_write_spec(tmp_path / "specs", {"path": "data/batches", "labels_path": "data/lab",
                                                        "pattern": "b-*.csv", "format": "csv"}))
    assert inside.source.path == str(tmp_path / "specs" / "data" / "batches")
    assert inside.source.labels_folder == str(tmp_path / "specs" / "data" / "lab")
    in_landing = load_spec(_write_spec(tmp_path / "specs", {"path": str(landing / "byo")}),
                           landing_dir=landing)
    assert in_landing.source.path == str(landing / "byo")


def test_a_glob_that_climbs_out_lists_nothing_it_is_refused_when_the_resource_loads(tmp_path):
    from resources.dataset import DatasetResource

    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "passwords.csv").write_text("user,password\nroot,hunter2\n")
    (tmp_path / "specs" / "batches").mkdir(parents=True)
    path = _write_spec(tmp_path / "specs", {"path": "batches", "format": "csv",
                                            "pattern": "../../secrets/*.csv"})
    dataset = DatasetResource(spec_path=str(path), landing_dir=str(tmp_path / "landing"))
    with pytest.raises(DatasetSpecError, match=r"source\.pattern: '\.\./\.\./secrets/\*\.csv'"):
        dataset.batch_files()


def test_policy_path_resolves_inside_the_spec_folder_and_is_refused_outside(tmp_path):
    (tmp_path / "specs").mkdir()
    path = tmp_path / "specs" / "spec.yaml"
    path.write_text(yaml.safe_dump(_spec(source={"path": "batches"}, policy="policy.yaml")))
    assert load_spec(path).policy == str(tmp_path / "specs" / "policy.yaml")
    path.write_text(yaml.safe_dump(_spec(source={"path": "batches"}, policy="../policy.yaml")))
    with pytest.raises(DatasetSpecError, match=r"policy: '\.\./policy\.yaml' resolves to"):
        load_spec(path, landing_dir=tmp_path)
    assert payments_spec(tmp_path).policy is None


@pytest.mark.parametrize("changes, field", [
    ({"labels": "sometimes"}, "labels"),
    ({"null_limits": {"amount": 2}}, "null_limits.amount"),
    ({"null_limits": {"nope": 0.1}}, "null_limits.nope"),
    ({"positive_label": {"a": 1}}, "positive_label"),
])
def test_new_fields_name_themselves_when_wrong(changes, field):
    with pytest.raises(DatasetSpecError) as error:
        parse_spec(_spec(**changes), origin="my-spec.yaml")
    assert field in str(error.value) and "my-spec.yaml" in str(error.value)


def test_the_payments_spec_accepts_late_labels_and_no_nulls():
    spec = parse_spec(PAYMENTS_SPEC_DATA)
    assert spec.labels == "either" and spec.max_null_fraction == 0.0
    assert spec.null_limit("amount") == (0.0, "max_null_fraction")
