import json

import numpy as np
import pandas as pd
import pytest

from unified_assets.ml.dataset_spec import PAYMENTS_SPEC_DATA
from unified_assets.ml.generator import DriftSpec, generate_batch
from unified_assets.ml.profiles import (
    VALUE_CAP,
    build_reference_profile,
    merge_profiles,
    profile_batch,
    profile_size_bytes,
)

NUMERIC = PAYMENTS_SPEC_DATA["numeric_features"]
CATEGORICAL = PAYMENTS_SPEC_DATA["categorical_features"]


@pytest.fixture(scope="module")
def reference() -> dict:
    return build_reference_profile(generate_batch(0, 5000), NUMERIC, CATEGORICAL)


def _wide_frame(rows: int, numeric: int, categorical: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    data = {}
    for i in range(numeric):
        data[f"n{i}"] = rng.lognormal(0, 1, rows) if i % 2 else rng.normal(0, 1, rows)
    names = np.array([f"category-{j}" for j in range(12)], dtype=object)
    for i in range(categorical):
        data[f"c{i}"] = rng.choice(names, rows)
    return pd.DataFrame(data)


def test_profiles_are_json_and_a_50_column_profile_is_a_few_tens_of_kb():
    frame = _wide_frame(100_000, 40, 10, seed=1)
    numeric = [f"n{i}" for i in range(40)]
    categorical = [f"c{i}" for i in range(10)]
    reference = build_reference_profile(frame, numeric, categorical)
    batch = profile_batch(_wide_frame(100_000, 40, 10, seed=2), reference)
    assert json.loads(json.dumps(batch, allow_nan=False)) == batch
    assert json.loads(json.dumps(reference, allow_nan=False)) == reference
    assert profile_size_bytes(batch) < 40_000
    assert profile_size_bytes(reference) < 64_000  # carries the edges as well
    # Continuous columns get about `bins` bins, not one per value.
    assert len(reference["layout"]["columns"]["n0"]["edges"]) <= 66


def test_histogram_counts_are_exact_right_closed_with_under_and_overflow():
    ref = pd.DataFrame({"x": np.arange(1, 101, dtype=float)})  # 100 distinct > bins + 1 = 9
    reference = build_reference_profile(ref, ["x"], [], bins=8)
    edges = np.array(reference["layout"]["columns"]["x"]["edges"])
    assert edges[0] == 1 and edges[-1] == 100
    cur = pd.DataFrame({"x": [0.0, 1.0, edges[1], edges[1] + 0.5, 100.0, 150.0, np.nan, np.inf]})
    column = profile_batch(cur, reference)["columns"]["x"]
    assert column["rows"] == 8 and column["nulls"] == 2 and column["count"] == 6
    expected = np.zeros(len(edges) + 1, dtype=int)
    expected[0] = 2  # 0 and 1 (<= e0)
    expected[1] = 1  # e1 itself: bins are right-closed
    expected[2] = 1  # e1 + 0.5
    expected[len(edges) - 1] = 1  # 100 = e[-1], last interior bin
    expected[-1] = 1  # 150 overflow
    assert column["hist"] == expected.tolist()
    assert column["under"] == pytest.approx(0.5)  # mean(1 - 0, 1 - 1)
    assert column["over"] == pytest.approx(50.0)
    width = edges[2] - edges[1]
    assert column["frac_1e4"][1] == round(10_000 * (edges[2] - edges[1] - 0.5) / width)
    assert column["min"] == 0.0 and column["max"] == 150.0
    assert column["mean"] == pytest.approx(np.mean([0, 1, edges[1], edges[1] + 0.5, 100, 150]))


def test_discrete_columns_use_their_values_as_edges_and_keep_exact_counts(reference):
    layout = reference["layout"]["columns"]
    assert layout["hour_of_day"]["edges"] == [float(h) for h in range(24)]
    assert layout["is_international"]["edges"] == [0.0, 1.0]
    frame = generate_batch(0, 5000)
    column = reference["columns"]["is_international"]
    ones = int(frame["is_international"].sum())
    assert column["values"] == [[0.0, 5000 - ones], [1.0, ones]]
    assert reference["columns"]["hour_of_day"]["values"] is None  # 24 distinct > VALUE_CAP
    assert VALUE_CAP < 24
    assert reference["columns"]["amount"]["std"] == pytest.approx(frame["amount"].std(ddof=0), rel=1e-12)


def test_categorical_profile_counts_vocabulary_and_other():
    ref = pd.DataFrame({"c": ["a"] * 50 + ["b"] * 30 + ["c"] * 20})
    reference = build_reference_profile(ref, [], ["c"], top_k=2)
    assert reference["layout"]["columns"]["c"]["vocab"] == ["a", "b"]
    batch = profile_batch(pd.DataFrame({"c": ["a", "a", "c", "z", None]}), reference)["columns"]["c"]
    assert batch["freq"] == {"a": 2}
    assert (batch["count"], batch["nulls"], batch["other"]) == (4, 1, 2)
    assert batch["other_keys"] == ["c", "z"]


def test_merge_equals_profiling_the_concatenation(reference):
    batches = [
        generate_batch(i, 3000, drift=DriftSpec(start_batch=2, covariate_shift=0.5)) for i in range(1, 5)
    ]
    batches[1].loc[:10, "amount"] = np.nan
    merged = merge_profiles([profile_batch(b, reference) for b in batches])
    whole = profile_batch(pd.concat(batches, ignore_index=True), reference)
    assert merged["rows"] == whole["rows"] == 12_000
    assert merged["layout_id"] == reference["layout_id"]
    for name, expected in whole["columns"].items():
        got = merged["columns"][name]
        if expected["kind"] == "numeric":
            for key in ("rows", "nulls", "count", "hist", "min", "max", "values"):
                assert got[key] == expected[key], (name, key)
            assert got["mean"] == pytest.approx(expected["mean"], rel=1e-12)
            assert got["std"] == pytest.approx(expected["std"], rel=1e-9)
            assert got["under"] == pytest.approx(expected["under"], rel=1e-9, abs=1e-12)
            assert got["over"] == pytest.approx(expected["over"], rel=1e-9, abs=1e-12)
            # Per-batch rounding to 1/10,000 of a bin width may move the merged value by one unit.
            assert np.abs(np.subtract(got["frac_1e4"], expected["frac_1e4"])).max() <= 1, name
        else:
            assert got == expected, name
    assert merged["columns"]["amount"]["nulls"] == 11


def test_merge_keeps_the_layout_and_rejects_mixed_layouts(reference):
    batch = profile_batch(generate_batch(1, 1000), reference)
    assert merge_profiles([reference, batch])["layout"] == reference["layout"]
    assert "layout" not in merge_profiles([batch, batch])
    other = build_reference_profile(generate_batch(9, 2000), NUMERIC, CATEGORICAL)
    with pytest.raises(ValueError, match="different layouts"):
        merge_profiles([batch, profile_batch(generate_batch(1, 1000), other)])


def test_values_become_unknown_past_the_cap_when_merging():
    ref = pd.DataFrame({"x": np.arange(10, dtype=float)})
    reference = build_reference_profile(ref, ["x"], [])
    low = profile_batch(pd.DataFrame({"x": np.arange(10, dtype=float)}), reference)
    high = profile_batch(pd.DataFrame({"x": np.arange(10, 20, dtype=float)}), reference)
    assert len(low["columns"]["x"]["values"]) == 10
    assert merge_profiles([low, high])["columns"]["x"]["values"] is None  # 20 > VALUE_CAP
    assert merge_profiles([low, low])["columns"]["x"]["values"][3] == [3.0, 2]


def test_missing_columns_and_empty_columns():
    reference = build_reference_profile(pd.DataFrame({"x": [1.0, 2.0, 3.0]}), ["x"], [])
    with pytest.raises(ValueError, match="lacks profiled columns"):
        profile_batch(pd.DataFrame({"y": [1.0]}), reference)
    empty = profile_batch(pd.DataFrame({"x": [np.nan, np.nan]}), reference)["columns"]["x"]
    assert (empty["count"], empty["nulls"], empty["mean"], sum(empty["hist"])) == (0, 2, None, 0)
    with pytest.raises(ValueError, match="both numeric and categorical"):
        build_reference_profile(pd.DataFrame({"x": [1.0]}), ["x"], ["x"])


def test_small_references_keep_every_value_as_an_edge_unless_told_not_to():
    frame = pd.DataFrame({"x": np.random.default_rng(5).normal(0, 1, 800)})
    exact = build_reference_profile(frame, ["x"], [])["layout"]["columns"]["x"]
    assert exact["exact"] and len(exact["edges"]) == 800
    binned = build_reference_profile(frame, ["x"], [], exact_rows=0)["layout"]["columns"]["x"]
    assert not binned["exact"] and len(binned["edges"]) <= 66


def test_profiles_and_drift_accept_every_dtype_and_read_integer_codes_as_integers():
    from unified_assets.ml.drift import compute_drift

    rows = 200

    def frame(seed):
        r = np.random.default_rng(seed)
        codes = r.integers(0, 2, rows)
        return pd.DataFrame({
            "flag_bool": r.random(rows) < 0.5,
            "count_nullable": pd.array(np.where(r.random(rows) < 0.1, None, codes), dtype="Int64"),
            "mixed_objects": pd.Series([None if i % 7 == 0 else float(v) for i, v in enumerate(codes)],
                                       dtype=object),
            "code_int": codes,
            "code_float": np.where(r.random(rows) < 0.1, np.nan, codes.astype(float)),
            "answer_bool": pd.array(np.where(r.random(rows) < 0.1, None, codes == 1), dtype="boolean"),
        })

    numeric = ["flag_bool", "count_nullable", "mixed_objects"]
    categorical = ["code_int", "code_float", "answer_bool"]
    reference = build_reference_profile(frame(0), numeric, categorical)
    current = profile_batch(frame(1), reference)
    assert set(reference["layout"]["columns"]["code_float"]["vocab"]) == {"0", "1"}
    assert set(reference["layout"]["columns"]["answer_bool"]["vocab"]) == {"True", "False"}
    assert current["columns"]["code_float"]["other"] == 0
    assert current["columns"]["count_nullable"]["nulls"] > 0
    result = compute_drift(reference, current)
    assert len(result.columns) == 6
