"""Messy real-world tables: misspelled columns, nulls per column, integer-coded segments."""

import numpy as np
import pandas as pd
import pytest
import yaml

from unified_assets.ml.batch_validation import curated, validate_batch_file
from unified_assets.ml.dataset_spec import DatasetSpecError, parse_spec

ROWS = 240


def _frame(seed=0, rows=ROWS):
    rng = np.random.default_rng(seed)
    return pd.DataFrame({
        "pid": [f"p{seed}-{i}" for i in range(rows)],
        "Outcome": rng.integers(0, 2, rows),
        "Glucose": rng.normal(120, 30, rows),
        "income": np.where(rng.random(rows) < 0.3, np.nan, rng.normal(50, 10, rows)),
        "smoker": rng.integers(0, 2, rows),  # 0/1 coded: numeric feature and segment
        "region": rng.choice(["north", "south", None], rows),
    })


def _spec_data(folder, **changes):
    return {"name": "messy", "source": {"path": str(folder), "format": "csv"}, "target": "Outcome",
            "id_column": "pid", "segment_columns": ["smoker", "region"],
            "numeric_features": ["Glucose", "income", "smoker"], "categorical_features": ["region"],
            "null_limits": {"income": 0.5, "region": 0.5}, **changes}


def _write(folder, frame, name="b-0.csv"):
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    frame.to_csv(path, index=False)
    return path


def test_a_misspelled_target_fails_the_schema_naming_column_field_and_close_match(tmp_path):
    spec = parse_spec(_spec_data(tmp_path, target="outcome"))
    report = validate_batch_file(_write(tmp_path, _frame()), spec)
    assert not report.passed and report.labelled
    (problem,) = report.findings["schema"]
    assert problem.startswith("b-0.csv: target column 'outcome' (spec field target) is missing "
                              "(did you mean 'Outcome'?)")
    assert "labels: late" in problem


def test_a_batch_without_the_target_awaits_labels_only_when_the_spec_says_so(tmp_path):
    path = _write(tmp_path, _frame().drop(columns=["Outcome"]))
    assert validate_batch_file(path, parse_spec(_spec_data(tmp_path))).findings["schema"]
    for labels in ("late", "either"):
        report = validate_batch_file(path, parse_spec(_spec_data(tmp_path, labels=labels)))
        assert report.passed and report.labelled is False, report.findings


def test_a_missing_feature_names_spec_field_and_suggestion(tmp_path):
    frame = _frame().rename(columns={"Glucose": "glucose_mg"})
    report = validate_batch_file(_write(tmp_path, frame, "g.csv"), parse_spec(_spec_data(tmp_path)))
    assert report.findings["schema"] == [
        "g.csv: missing column 'Glucose' (spec field numeric_features) (did you mean 'glucose_mg'?)"]
    assert report.failed_checks() == ["schema"] and not report.passed
    assert set(report.not_evaluated) == {"ids", "nulls", "ranges", "label"}


def _write_spec(tmp_path, **changes):
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(_spec_data("batches", **changes)))
    return path


def test_the_resource_checks_the_spec_against_the_first_landed_batch_at_load(tmp_path):
    from resources.dataset import DatasetResource

    _write(tmp_path / "batches", _frame())
    good = DatasetResource(spec_path=str(_write_spec(tmp_path)), landing_dir=str(tmp_path / "l"))
    assert good.spec.target == "Outcome"
    bad = DatasetResource(spec_path=str(_write_spec(tmp_path, target="outcome")),
                          landing_dir=str(tmp_path / "l"))
    with pytest.raises(DatasetSpecError) as error:
        _ = bad.spec
    message = str(error.value)
    assert "b-0.csv: target column 'outcome' (spec field target) is missing (did you mean " \
        "'Outcome'?)" in message
    assert str(tmp_path / "spec.yaml") in message


def test_null_limits_unknown_column_and_bad_value_are_refused(tmp_path):
    with pytest.raises(DatasetSpecError, match=r"null_limits\.incme: not a feature or segment"):
        parse_spec(_spec_data(tmp_path, null_limits={"incme": 0.5}))
    with pytest.raises(DatasetSpecError, match=r"null_limits\.income: 1.5"):
        parse_spec(_spec_data(tmp_path, null_limits={"income": 1.5}))


def test_nulls_per_column_name_the_spec_field_to_change(tmp_path):
    frame = _frame()
    frame.loc[:59, "Glucose"] = np.nan  # 25%: above the global default
    report = validate_batch_file(_write(tmp_path, frame, "n.csv"),
                                 parse_spec(_spec_data(tmp_path, null_limits={"income": 0.1, "region": 0.5})))
    problems = report.findings["nulls"]
    assert any(p.startswith("n.csv: column 'Glucose' is 25.0% null, above the 10.0% allowed by spec "
                            "field max_null_fraction") for p in problems), problems
    assert any("column 'income'" in p and "spec field null_limits.income" in p for p in problems)
    assert not any("region" in p for p in problems)  # within its null limit


def test_missing_categories_stay_null_and_integer_codes_read_as_integers(tmp_path):
    spec = parse_spec(_spec_data(tmp_path))
    frame = _frame()
    frame.loc[:3, "smoker"] = np.nan  # ints with a null load as floats
    spec = spec.model_copy(update={"null_limits": {**spec.null_limits, "smoker": 0.1}})
    report = validate_batch_file(_write(tmp_path, frame), spec)
    assert report.passed, report.findings
    out = curated(report.frame, spec, "b")
    assert out["region"].isna().sum() == report.frame["region"].isna().sum() > 0
    assert "nan" not in set(out["region"].dropna()) and "None" not in set(out["region"].dropna())
    assert out["smoker"].dtype == "float64"  # a numeric feature stays numeric when also a segment


@pytest.mark.parametrize("column", [
    pd.Series([0, 1, 1, 0]), pd.Series([0.0, 1.0, None, 0.0]), pd.Series([True, False, True, None]),
    pd.Series([1, None, 0, 1], dtype="Int64"), pd.Series(["0", "1", None, "1"]),
])
def test_category_text_renders_codes_without_decimals_and_keeps_nulls(column):
    from unified_assets.ml.profiles import category_text

    text = category_text(column)
    assert set(text.dropna()) <= {"0", "1", "True", "False"}
    assert text.isna().sum() == column.isna().sum()


def test_an_int_column_that_is_numeric_feature_and_segment_trains_profiles_and_drifts(tmp_path):
    from unified_assets.ml.evidently_report import evidently_verdicts
    from unified_assets.ml.metrics import segment_metrics
    from unified_assets.ml.profiles import build_reference_profile, profile_batch
    from unified_assets.ml.torch_model import TorchParams, predict_scores, train_torch

    spec = parse_spec(_spec_data(tmp_path))
    frames = []
    for seed in (0, 1):
        report = validate_batch_file(_write(tmp_path, _frame(seed), f"b-{seed}.csv"), spec)
        assert report.passed, report.findings
        frames.append(curated(report.frame, spec, f"b-{seed}"))
    reference = build_reference_profile(frames[0], spec.numeric_features, spec.categorical_features)
    assert profile_batch(frames[1], reference)["columns"]["smoker"]["kind"] == "numeric"
    result = train_torch(frames[0], spec.numeric_features, spec.categorical_features, spec.target,
                         TorchParams(epochs=1, hidden_units=4, device="cpu"))
    scores = predict_scores(result.network, result.encoder, frames[1])
    assert np.isfinite(scores).all()
    rows = segment_metrics(frames[1], frames[1][spec.target].to_numpy(), scores, spec.segment_columns)
    assert {r["value"] for r in rows if r["segment"] == "smoker"} <= {"0", "1"}
    verdicts = evidently_verdicts(frames[0], frames[1], spec.numeric_features, spec.categorical_features)
    assert {c.column for c in verdicts.columns} == {"Glucose", "income", "smoker", "region"}
