import pandas as pd
import pytest

from unified_assets.ml.batch_validation import curated, validate_batch_file
from unified_assets.ml.dataset_spec import payments_spec
from unified_assets.ml.generator import generate_batch


@pytest.fixture
def spec(tmp_path):
    return payments_spec(tmp_path)


def _write(tmp_path, frame, name="b.parquet"):
    path = tmp_path / name
    frame.to_parquet(path, index=False)
    return path


def test_clean_batch_passes_every_check(tmp_path, spec):
    report = validate_batch_file(_write(tmp_path, generate_batch(0, 300)), spec)
    assert report.passed, report.findings
    assert report.rows == 300


def test_missing_column_fails_schema_naming_file_and_column(tmp_path, spec):
    path = _write(tmp_path, generate_batch(0, 50).drop(columns=["amount"]), "missing.parquet")
    report = validate_batch_file(path, spec)
    # Only schema failed; the checks it stopped did not run (skipped, not failed), and the
    # batch still fails closed.
    assert report.failed_checks() == ["schema"]
    assert set(report.not_evaluated) == {"ids", "nulls", "ranges", "label"}
    assert report.findings["nulls"] == [] and not report.passed
    assert "missing.parquet" in report.findings["schema"][0]
    assert "'amount'" in report.findings["schema"][0] or "amount" in report.findings["schema"][0]


def test_wrong_type_fails_schema(tmp_path, spec):
    frame = generate_batch(0, 50)
    frame["amount"] = frame["amount"].astype(str) + " USD"
    report = validate_batch_file(_write(tmp_path, frame, "typed.parquet"), spec)
    assert "column 'amount' must be numeric, found object" in report.findings["schema"][0]


def test_empty_and_non_parquet_files_are_findings_not_crashes(tmp_path, spec):
    empty = tmp_path / "empty.parquet"
    empty.write_bytes(b"")
    text = tmp_path / "notes.parquet"
    text.write_text("id,amount\n1,2\n")
    for path in (empty, text):
        report = validate_batch_file(path, spec)
        assert not report.passed
        assert report.frame is None
        assert f"{path.name}: cannot be read as parquet" in report.findings["schema"][0]
    zero_rows = _write(tmp_path, generate_batch(0, 10).iloc[:0], "zero.parquet")
    assert "the batch has no rows" in validate_batch_file(zero_rows, spec).findings["schema"][0]


def test_nulls_ranges_and_labels(tmp_path, spec):
    frame = generate_batch(0, 100)
    frame.loc[:9, "device_trust_score"] = None
    frame.loc[0, "hour_of_day"] = 30
    frame["is_fraud"] = frame["is_fraud"].astype("float")
    frame.loc[5, "is_fraud"] = None
    frame.loc[6, "is_fraud"] = 3
    report = validate_batch_file(_write(tmp_path, frame), spec)
    assert report.failed_checks() == ["nulls", "ranges", "label"]
    assert "'device_trust_score' is 10.0% null" in report.findings["nulls"][0]
    assert "'hour_of_day' has 0 value(s) below 0 and 1 above 23" in report.findings["ranges"][0]
    assert "missing on 1 of 100 row(s)" in report.findings["label"][0]
    assert "found 3 classes [0.0, 1.0, 3.0]" in report.findings["label"][1]


def test_curated_types_ids_and_label(spec):
    frame = generate_batch(2, 20)
    out = curated(frame, spec, "batch-00002")
    assert out["row_id"].tolist() == frame["transaction_id"].tolist()
    assert (out["batch_id"] == "batch-00002").all()
    assert out["amount"].dtype == "float64" and out["region"].dtype == object
    assert set(out.columns) == set(spec.required_columns) | {"row_id", "batch_id"}
    assert out["is_fraud"].tolist() == frame["is_fraud"].tolist()


def test_csv_source_reads_and_synthesises_row_ids(tmp_path):
    spec = payments_spec(tmp_path).model_copy(update={"id_column": None})
    spec = spec.model_copy(update={"source": spec.source.model_copy(update={"format": "csv"})})
    path = tmp_path / "b.csv"
    generate_batch(0, 30).to_csv(path, index=False)
    report = validate_batch_file(path, spec)
    assert report.passed
    assert curated(report.frame, spec, "b")["row_id"].tolist()[:2] == ["b:0", "b:1"]
    assert isinstance(report.frame, pd.DataFrame)


def test_batch_without_label_column_passes_and_awaits_labels(tmp_path, spec):
    frame = generate_batch(1, 50).drop(columns=["is_fraud"])
    report = validate_batch_file(_write(tmp_path, frame), spec)
    assert report.passed and report.labelled is False
    out = curated(report.frame, spec, "batch-00001")
    assert "is_fraud" not in out.columns and len(out) == 50


@pytest.mark.parametrize("positive_label, values", [(2, [0, 1, 2]), (1, [0, 1, 2]), (2, [0, 1])])
def test_a_target_with_more_than_two_classes_fails_whatever_positive_label_says(
        tmp_path, spec, positive_label, values):
    spec = spec.model_copy(update={"positive_label": positive_label})
    frame = generate_batch(0, 60)
    frame["is_fraud"] = [values[i % len(values)] for i in range(len(frame))]
    report = validate_batch_file(_write(tmp_path, frame, "classes.parquet"), spec)
    assert report.failed_checks() == ["label"], report.findings
    (problem,) = report.findings["label"]
    assert "classes.parquet" in problem and "'is_fraud'" in problem
    assert str(values) in problem


def test_a_target_with_the_positive_label_and_one_other_value_passes(tmp_path, spec):
    spec = spec.model_copy(update={"positive_label": 2})
    frame = generate_batch(0, 60)
    frame["is_fraud"] = frame["is_fraud"] * 2
    report = validate_batch_file(_write(tmp_path, frame), spec)
    assert report.passed, report.findings
    expected = (frame["is_fraud"] == 2).astype(int).tolist()
    assert curated(report.frame, spec, "b")["is_fraud"].tolist() == expected


def test_infinite_values_fail_ranges_naming_file_column_and_count(tmp_path, spec):
    frame = generate_batch(0, 100)
    frame.loc[[3, 4], "amount"] = float("inf")
    frame.loc[5, "hour_of_day"] = float("-inf")
    report = validate_batch_file(_write(tmp_path, frame, "inf.parquet"), spec)
    assert report.failed_checks() == ["ranges"], report.findings
    problems = "\n".join(report.findings["ranges"])
    assert "inf.parquet: column 'amount' has 2 non-finite value(s) (2 +inf, 0 -inf)" in problems
    assert "inf.parquet: column 'hour_of_day' has 1 non-finite value(s) (0 +inf, 1 -inf)" in problems


def test_infinite_values_fail_even_without_a_declared_range_and_from_csv(tmp_path):
    spec = payments_spec(tmp_path).model_copy(update={"ranges": {}, "id_column": None})
    spec = spec.model_copy(update={"source": spec.source.model_copy(update={"format": "csv"})})
    frame = generate_batch(0, 40)
    frame["amount"] = frame["amount"].astype(str)
    frame.loc[7, "amount"] = "inf"
    path = tmp_path / "b.csv"
    frame.to_csv(path, index=False)
    report = validate_batch_file(path, spec)
    assert report.failed_checks() == ["ranges"]
    assert "b.csv: column 'amount' has 1 non-finite value(s) (1 +inf, 0 -inf)" in report.findings["ranges"][0]


def test_nan_in_a_feature_fails_nulls_when_nulls_are_not_allowed(tmp_path, spec):
    frame = generate_batch(0, 50)
    frame.loc[2, "amount"] = float("nan")
    report = validate_batch_file(_write(tmp_path, frame), spec)
    assert report.failed_checks() == ["nulls"]
    assert "column 'amount' is 2.0% null" in report.findings["nulls"][0]


@pytest.mark.parametrize("mutate, expected", [
    (lambda f: f.assign(transaction_id=["t-1"] * 3 + f["transaction_id"].tolist()[3:]),
     "ids.parquet: id column 'transaction_id' has 2 duplicated value(s), e.g. ['t-1']"),
    (lambda f: f.assign(transaction_id=[None, None] + f["transaction_id"].tolist()[2:]),
     "ids.parquet: id column 'transaction_id' is null or blank on 2 row(s), e.g. rows [0, 1]"),
    (lambda f: f.assign(transaction_id=[""] + f["transaction_id"].tolist()[1:]),
     "ids.parquet: id column 'transaction_id' is null or blank on 1 row(s), e.g. rows [0]"),
    (lambda f: f.drop(columns=["transaction_id"]),
     "ids.parquet: id column 'transaction_id' is missing"),
])
def test_duplicate_null_or_missing_ids_fail_the_ids_check(tmp_path, spec, mutate, expected):
    frame = mutate(generate_batch(0, 50))
    if frame.get("transaction_id") is not None:
        frame["transaction_id"] = frame["transaction_id"].astype(object)
    report = validate_batch_file(_write(tmp_path, frame, "ids.parquet"), spec)
    assert report.failed_checks() == ["ids"], report.findings
    assert any(p.startswith(expected) for p in report.findings["ids"]), report.findings["ids"]


def test_a_check_that_could_not_run_never_passes_a_batch(tmp_path, spec):
    """Fail closed: no finding anywhere but a check not evaluated is still a rejection."""
    report = validate_batch_file(_write(tmp_path, generate_batch(0, 30)), spec)
    report.not_evaluated["label"] = "a reason"
    assert report.failed_checks() == [] and not report.passed
