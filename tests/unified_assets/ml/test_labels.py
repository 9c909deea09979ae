import pandas as pd
import pytest

from unified_assets.ml.batch_validation import curated
from unified_assets.ml.dataset_spec import payments_spec
from unified_assets.ml.generator import generate_batch
from unified_assets.ml.labels import align_labels


@pytest.fixture
def spec(tmp_path):
    return payments_spec(tmp_path)


@pytest.fixture
def batch_and_truth(spec):
    frame = generate_batch(4, 60)
    return curated(frame.drop(columns=["is_fraud"]), spec, "batch-00004"), frame


def _labels(tmp_path, frame) -> str:
    path = tmp_path / "labels.parquet"
    frame.to_parquet(path, index=False)
    return path


def test_labels_match_rows_by_id_in_any_order(tmp_path, spec, batch_and_truth):
    batch, truth = batch_and_truth
    shuffled = truth[["transaction_id", "is_fraud"]].sample(frac=1.0, random_state=1)
    report = align_labels(_labels(tmp_path, shuffled), batch, spec)
    assert report.passed
    assert report.labels["row_id"].tolist() == batch["row_id"].tolist()
    assert report.labels["is_fraud"].tolist() == truth["is_fraud"].tolist()


@pytest.mark.parametrize("mutate, problem", [
    (lambda f: f.iloc[5:], "no label for 5 of 60 batch row(s)"),
    (lambda f: pd.concat([f, f.iloc[:2]]), "id column 'transaction_id' has 2 duplicated value(s)"),
    (lambda f: pd.concat([f, f.iloc[:1].assign(transaction_id="x")]),
     "1 label(s) for ids that are not in the batch"),
    (lambda f: f.drop(columns=["transaction_id"]), "missing the id column 'transaction_id'"),
    (lambda f: f.drop(columns=["is_fraud"]), "missing the label column 'is_fraud'"),
    (lambda f: f.assign(is_fraud=f["is_fraud"].astype(float).where(f.index > 2)),
     "label 'is_fraud' missing on 3 row(s)"),
])
def test_bad_labels_name_the_problem(tmp_path, spec, batch_and_truth, mutate, problem):
    batch, truth = batch_and_truth
    report = align_labels(_labels(tmp_path, mutate(truth[["transaction_id", "is_fraud"]])), batch, spec)
    assert not report.passed
    assert any(problem in p and "labels.parquet" in p for p in report.problems), report.problems


def test_without_an_id_column_labels_match_by_position(tmp_path, spec, batch_and_truth):
    spec = spec.model_copy(update={"id_column": None})
    batch, truth = batch_and_truth
    assert align_labels(_labels(tmp_path, truth[["is_fraud"]]), batch, spec).passed
    short = align_labels(_labels(tmp_path, truth[["is_fraud"]].iloc[:10]), batch, spec)
    assert short.problems == ["labels.parquet: 10 label row(s) for 60 batch row(s); without an id "
                              "column labels match rows by position"]


def test_unreadable_labels_file_is_a_finding(tmp_path, spec, batch_and_truth):
    path = tmp_path / "labels.parquet"
    path.write_text("not parquet")
    report = align_labels(path, batch_and_truth[0], spec)
    assert "cannot be read as parquet" in report.problems[0]


@pytest.mark.parametrize("mutate, problem", [
    (lambda f: f.assign(transaction_id=f["transaction_id"].where(f.index > 1)),
     "labels.parquet: id column 'transaction_id' is null or blank on 2 row(s), e.g. rows [0, 1]"),
    (lambda f: pd.concat([f, f.iloc[:2]]),
     "labels.parquet: id column 'transaction_id' has 2 duplicated value(s), e.g. ["),
    (lambda f: f.assign(is_fraud=[i % 3 for i in range(len(f))]),
     "labels.parquet: label 'is_fraud' must be binary, found 3 classes [0, 1, 2]"),
])
def test_labels_with_null_or_duplicate_ids_or_three_classes_name_file_column_examples(
        tmp_path, spec, batch_and_truth, mutate, problem):
    batch, truth = batch_and_truth
    report = align_labels(_labels(tmp_path, mutate(truth[["transaction_id", "is_fraud"]])), batch, spec)
    assert not report.passed
    assert any(p.startswith(problem) for p in report.problems), report.problems


def test_a_single_label_row_never_labels_a_batch_whose_ids_collapse(tmp_path, spec, batch_and_truth):
    batch, truth = batch_and_truth
    collapsed = batch.assign(row_id="None")  # ids that all read as one value
    one_row = truth[["transaction_id", "is_fraud"]].iloc[:1].assign(transaction_id=None)
    report = align_labels(_labels(tmp_path, one_row), collapsed, spec)
    assert not report.passed and report.labels is None
