"""Binary targets of any type: strings, booleans, 1/2 codes; curation always yields 0/1 ints."""

import pandas as pd
import pytest

from unified_assets.ml.batch_validation import curated, validate_batch_file
from unified_assets.ml.dataset_spec import DatasetSpecError, parse_spec
from unified_assets.ml.labels import align_labels


def _spec(tmp_path, **changes):
    data = {"name": "churn", "source": {"path": str(tmp_path), "format": "csv"}, "target": "churned",
            "id_column": "cid", "numeric_features": ["tenure"], "categorical_features": ["plan"]}
    return parse_spec({**data, **changes})


def _batch(tmp_path, labels, name="b.csv"):
    frame = pd.DataFrame({"cid": [f"c{i}" for i in range(len(labels))],
                          "tenure": range(len(labels)), "plan": ["a", "b"] * (len(labels) // 2),
                          "churned": labels})
    path = tmp_path / name
    frame.to_csv(path, index=False)
    return path


@pytest.mark.parametrize("labels, positive, expected", [
    (["No", "Yes", "Yes", "No"], "Yes", [0, 1, 1, 0]),
    (["no", "YES", "YES", "no"], "yes", [0, 1, 1, 0]),
    ([True, False, True, False], None, [1, 0, 1, 0]),
    ([1, 2, 2, 1], 2, [0, 1, 1, 0]),
    ([0, 1, 1, 0], None, [0, 1, 1, 0]),
    (["No", "No", "No", "No"], "Yes", [0, 0, 0, 0]),
])
def test_any_binary_target_curates_to_zero_one(tmp_path, labels, positive, expected):
    spec = _spec(tmp_path, **({"positive_label": positive} if positive is not None else {}))
    report = validate_batch_file(_batch(tmp_path, labels), spec)
    assert report.passed, report.findings
    out = curated(report.frame, spec, "b")["churned"]
    assert out.tolist() == expected and out.dtype == "int64"


@pytest.mark.parametrize("labels, found", [(["No", "Yes"] * 2, "['No', 'Yes']"), ([1, 2] * 2, "[1, 2]")])
def test_labels_not_zero_one_without_positive_label_are_refused_naming_values_and_field(
        tmp_path, labels, found):
    report = validate_batch_file(_batch(tmp_path, labels, "churn.csv"), _spec(tmp_path))
    (problem,) = report.findings["label"]
    assert problem.startswith(f"churn.csv: label 'churned' has the two values {found}, not 0/1")
    assert "positive_label" in problem


def test_one_value_that_is_not_zero_one_is_refused_naming_it(tmp_path):
    report = validate_batch_file(_batch(tmp_path, [3, 3, 3, 3], "one.csv"), _spec(tmp_path))
    assert report.findings["label"][0].startswith("one.csv: label 'churned' must be binary, found "
                                                  "values [3], not 0/1 or booleans")


def test_three_classes_are_refused_naming_them(tmp_path):
    report = validate_batch_file(_batch(tmp_path, ["a", "b", "c", "a"], "three.csv"),
                                 _spec(tmp_path, positive_label="a"))
    assert report.findings["label"] == [
        "three.csv: label 'churned' must be binary, found 3 classes ['a', 'b', 'c']; map it to two "
        "classes before landing"]


def test_a_positive_label_that_matches_no_value_is_refused(tmp_path):
    report = validate_batch_file(_batch(tmp_path, ["No", "Yes"] * 2), _spec(tmp_path, positive_label="Y"))
    assert "positive_label matches none of them" in report.findings["label"][0]


@pytest.mark.parametrize("value", ["Yes", True, 2, 1.0])
def test_positive_label_of_any_type_loads(tmp_path, value):
    assert _spec(tmp_path, positive_label=value).positive_label == value


def test_positive_label_must_be_a_scalar(tmp_path):
    with pytest.raises(DatasetSpecError, match="positive_label"):
        _spec(tmp_path, positive_label=["Yes"])


def test_late_labels_of_any_type_are_mapped_to_zero_one(tmp_path):
    spec = _spec(tmp_path, positive_label="Yes", labels="late")
    batch_path = _batch(tmp_path, ["No", "Yes", "Yes", "No"])
    frame = pd.read_csv(batch_path).drop(columns=["churned"])
    batch = curated(frame, spec, "b")
    labels = tmp_path / "labels.csv"
    pd.DataFrame({"cid": ["c3", "c2", "c1", "c0"], "churned": ["No", "Yes", "Yes", "No"]}).to_csv(
        labels, index=False)
    report = align_labels(labels, batch, spec)
    assert report.passed, report.problems
    assert report.labels["churned"].tolist() == [0, 1, 1, 0]
    refused = align_labels(labels, batch, _spec(tmp_path, labels="late"))
    assert "positive_label" in refused.problems[0] and "labels.csv" in refused.problems[0]
