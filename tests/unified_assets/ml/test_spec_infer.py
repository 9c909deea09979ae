"""`spec infer` on generated messy tables: the draft loads with load_spec and validates the
batches it was drawn from."""

import argparse

import numpy as np
import pandas as pd
import pytest
import yaml

from unified_assets.ml.batch_validation import validate_batch_file
from unified_assets.ml.dataset_spec import DatasetSpecError, load_spec
from unified_assets.ml.spec_infer import SpecInferError, infer_spec

ROWS = 300


def _messy(seed, rows=ROWS, label=("No", "Yes")):
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({
        "customer_id": [f"c-{seed}-{i}" for i in range(rows)],
        "tenure": rng.integers(0, 72, rows),
        "income": np.where(rng.random(rows) < 0.2, np.nan, rng.normal(50, 10, rows)),
        "score": np.where(rng.random(rows) < 0.05, np.nan, rng.random(rows)),
        "senior": rng.integers(0, 2, rows),  # integer-coded 0/1
        "paperless": rng.random(rows) < 0.5,  # boolean
        "plan": rng.choice(["basic", "plus", "pro"], rows),
        "city": np.where(rng.random(rows) < 0.1, None, rng.choice([f"city{i}" for i in range(8)], rows)),
        "churned": rng.choice(label, rows),
    })
    return frame


def _land(folder, frames, fmt="csv"):
    folder.mkdir(parents=True, exist_ok=True)
    for i, frame in enumerate(frames):
        path = folder / f"b-{i}.{fmt}"
        frame.to_csv(path, index=False) if fmt == "csv" else frame.to_parquet(path, index=False)
    return folder


def _infer_and_load(tmp_path, folder):
    out = tmp_path / "spec.yaml"
    draft = infer_spec([folder], out)
    out.write_text(draft.text)
    return draft, load_spec(out)


def test_string_labels_nulls_codes_and_booleans_draft_a_spec_that_loads_and_passes(tmp_path):
    folder = _land(tmp_path / "batches", [_messy(0), _messy(1)])
    draft, spec = _infer_and_load(tmp_path, folder)
    assert spec.target == "churned" and spec.positive_label == "Yes"
    assert spec.name == tmp_path.name  # not the generic "batches"
    assert spec.id_column == "customer_id"
    assert {"tenure", "income", "score", "senior"} <= set(spec.numeric_features)
    assert {"plan", "city", "paperless"} <= set(spec.categorical_features)
    assert 0.2 < spec.null_limits["income"] <= 0.5 and "city" in spec.null_limits
    assert "tenure" not in spec.null_limits
    assert spec.segment_columns and set(spec.segment_columns) <= {"plan", "paperless", "city", "senior"}
    assert spec.ranges == {}
    assert "# CHECK" in draft.text
    for path in sorted(folder.iterdir()):
        report = validate_batch_file(path, spec)
        assert report.passed, report.findings


def test_boolean_target_needs_no_positive_label(tmp_path):
    frames = [_messy(0, label=(True, False)).rename(columns={"churned": "label"})]
    _, spec = _infer_and_load(tmp_path, _land(tmp_path / "batches", frames, "parquet"))
    assert spec.target == "label" and spec.positive_label is None
    assert validate_batch_file(tmp_path / "batches" / "b-0.parquet", spec).passed


def test_a_wide_table_with_a_300_level_categorical(tmp_path):
    rng = np.random.default_rng(3)
    frame = pd.DataFrame(rng.normal(size=(ROWS, 150)), columns=[f"x{i}" for i in range(150)])
    frame["order_id"] = [f"o{i}" for i in range(ROWS)]
    frame["comment"] = [f"free text {i}" for i in range(ROWS)]  # every row its own: not a feature
    frame["shop"] = rng.choice([f"s{i}" for i in range(300)], ROWS)
    frame["y"] = rng.integers(0, 2, ROWS)
    draft, spec = _infer_and_load(tmp_path, _land(tmp_path / "batches", [frame]))
    assert spec.target == "y" and len(spec.numeric_features) == 150 and spec.id_column == "order_id"
    assert spec.categorical_features == ["shop"]
    assert "high cardinality" in draft.text and "left out: comment" in draft.text


def test_a_three_class_target_is_not_guessed_and_the_draft_says_so(tmp_path):
    rng = np.random.default_rng(4)
    frame = pd.DataFrame({"a": rng.normal(size=ROWS), "b": rng.normal(size=ROWS),
                          "species": rng.choice(["setosa", "versicolor", "virginica"], ROWS)})
    out = tmp_path / "spec.yaml"
    draft = infer_spec([_land(tmp_path / "batches", [frame])], out)
    assert draft.spec["target"] is None
    assert "no binary column found" in draft.text and "'species', which has 3 classes" in draft.text
    out.write_text(draft.text)
    with pytest.raises(DatasetSpecError, match="target"):
        load_spec(out)


def test_a_batch_missing_a_column_leaves_it_out_with_a_note(tmp_path):
    folder = _land(tmp_path / "batches", [_messy(0), _messy(1).drop(columns=["score"])])
    draft, spec = _infer_and_load(tmp_path, folder)
    assert "score" not in spec.feature_columns
    assert any("'score' is missing from ['b-1.csv']" in n for n in draft.notes)
    assert all(validate_batch_file(p, spec).passed for p in sorted(folder.iterdir()))


def test_a_spec_drafted_then_misspelled_names_the_column(tmp_path):
    folder = _land(tmp_path / "batches", [_messy(0)])
    draft, _ = _infer_and_load(tmp_path, folder)
    (tmp_path / "spec.yaml").write_text(draft.text.replace('target: "churned"', 'target: "Churned"'))
    report = validate_batch_file(folder / "b-0.csv", load_spec(tmp_path / "spec.yaml"))
    assert "target column 'Churned' (spec field target) is missing (did you mean 'churned'?)" \
        in report.findings["schema"][0]


def test_sklearn_breast_cancer_drafts_a_spec_that_passes(tmp_path):
    from sklearn.datasets import load_breast_cancer

    frame = load_breast_cancer(as_frame=True).frame
    _, spec = _infer_and_load(tmp_path, _land(tmp_path / "data", [frame.iloc[:300], frame.iloc[300:]]))
    assert spec.target == "target" and len(spec.numeric_features) == 30
    assert all(validate_batch_file(p, spec).passed for p in sorted((tmp_path / "data").iterdir()))


def test_data_outside_the_spec_folder_and_mixed_formats_are_refused(tmp_path):
    folder = _land(tmp_path / "batches", [_messy(0)])
    with pytest.raises(SpecInferError, match="inside its own folder"):
        infer_spec([folder], tmp_path / "elsewhere" / "spec.yaml")
    _messy(1).to_parquet(folder / "b-9.parquet")
    with pytest.raises(SpecInferError, match="one folder and one format"):
        infer_spec([folder], tmp_path / "spec.yaml")


def test_the_cli_writes_the_draft_beside_the_data(tmp_path, capsys):
    from unified_assets.spec_cli import add_spec_parser

    parser = argparse.ArgumentParser()
    add_spec_parser(parser.add_subparsers(dest="command", required=True))
    folder = _land(tmp_path / "batches", [_messy(0)])
    args = parser.parse_args(["spec", "infer", str(folder)])
    assert args.run(args) == 0
    assert load_spec(tmp_path / "spec.yaml").target == "churned"
    assert args.run(args) == 1 and "exists" in capsys.readouterr().err
    assert yaml.safe_load((tmp_path / "spec.yaml").read_text())["positive_label"] == "Yes"


def test_a_row_number_column_is_the_id_never_a_feature(tmp_path):
    """R data sets and `to_csv()` without index=False carry a row number ('rownames',
    'Unnamed: 0'): unique consecutive integers that would train as a feature (and, on data
    sorted by the target, leak it)."""
    frames = []
    for i in (0, 1):
        frame = _messy(i).drop(columns=["customer_id"])
        frame.insert(0, "rownames", range(1 + i * ROWS, 1 + (i + 1) * ROWS))
        frames.append(frame)
    folder = _land(tmp_path / "batches", frames)
    draft, spec = _infer_and_load(tmp_path, folder)
    assert spec.id_column == "rownames"
    assert "rownames" not in spec.numeric_features + spec.categorical_features


def test_an_unnamed_index_column_is_left_out_when_there_is_an_id(tmp_path):
    frames = []
    for i in (0, 1):
        frame = _messy(i)
        frame.insert(0, "Unnamed: 0", range(ROWS))  # restarts in every file
        frames.append(frame)
    folder = _land(tmp_path / "batches", frames)
    draft, spec = _infer_and_load(tmp_path, folder)
    assert spec.id_column == "customer_id"
    assert "Unnamed: 0" not in spec.numeric_features + spec.categorical_features
    assert "# left out: Unnamed: 0: a row number" in draft.text


def test_null_limits_cover_the_worst_sampled_file_not_the_average(tmp_path):
    """One file 40% null in 'score', the others clean: a limit from the pooled rate (~13%)
    would reject the file the draft was made from."""
    frames = [_messy(i) for i in range(3)]
    for frame in frames:
        frame["score"] = frame["score"].fillna(0.5)
    frames[2]["score"] = np.where(np.arange(ROWS) % 5 < 2, np.nan, frames[2]["score"])
    folder = _land(tmp_path / "batches", frames)
    draft, spec = _infer_and_load(tmp_path, folder)
    assert spec.null_limits["score"] >= 0.4
    assert "40.0% null in b-2.csv" in draft.text
    for path in sorted(folder.iterdir()):
        assert validate_batch_file(path, spec).passed


def test_a_target_named_column_with_three_classes_is_flagged_not_silently_replaced(tmp_path):
    """Found: with 'churned' Yes/No/Maybe the draft chose another binary column as target and
    said nothing about 'churned'."""
    frames = []
    for i in (0, 1):
        frame = _messy(i)
        frame["churned"] = np.random.default_rng(i).choice(["Yes", "No", "Maybe"], ROWS)
        frames.append(frame)
    folder = _land(tmp_path / "batches", frames)
    draft = infer_spec([folder], tmp_path / "spec.yaml")
    assert "# NOTE: CHECK: column 'churned' is named like a target but has 3 classes" in draft.text


def test_the_suggested_ranges_line_can_replace_the_empty_one(tmp_path):
    """Found: uncommenting a suggested range under `ranges: {}` made the YAML invalid."""
    folder = _land(tmp_path / "batches", [_messy(0), _messy(1)])
    out = tmp_path / "spec.yaml"
    text = infer_spec([folder], out).text
    suggested = next(line for line in text.splitlines() if line.startswith("#   ranges: {"))
    out.write_text(text.replace("ranges: {}", suggested.removeprefix("#   ")))
    spec = load_spec(out)
    assert spec.ranges and "tenure" in spec.ranges
