"""The torch encoder and the category levels both candidates share, on messy columns."""

import pickle

import numpy as np
import pandas as pd
import pytest

from unified_assets.ml.features import (
    MISSING_LEVEL,
    OTHER_LEVEL,
    CategoryLevels,
    TabularEncoder,
    category_keys,
)


@pytest.mark.parametrize("n_numeric", [100, 32_800])  # offsets past int8 and int16
def test_one_hot_lands_in_its_own_column_at_wide_offsets(n_numeric):
    rng = np.random.default_rng(0)
    numbers = rng.normal(size=(60, n_numeric))
    frame = pd.DataFrame(numbers, columns=[f"x{i}" for i in range(n_numeric)])
    frame["c"] = [f"c{i % 50:02d}" for i in range(60)]
    encoder = TabularEncoder.fit(frame, list(frame.columns[:-1]), ["c"])
    assert encoder.width == n_numeric + 50
    probe = frame.iloc[[40, 49]].reset_index(drop=True)
    out = encoder.transform(probe)
    hot = out[:, n_numeric:]
    assert [list(np.flatnonzero(r)) for r in hot] == [[40], [49]]  # c40 and c49, in that order
    means, stds = numbers.mean(axis=0), numbers.std(axis=0)
    np.testing.assert_allclose(out[:, :n_numeric], (numbers[[40, 49]] - means) / stds, rtol=1e-4,
                               atol=1e-5)


MISSING_VALUES = {
    "object None/NaN": pd.Series(["a", None, "b", np.nan, "a"], dtype=object),
    "object pd.NA": pd.Series(["a", pd.NA, "b", "a", "a"], dtype=object),
    "string": pd.Series(["a", None, "b", "a", "a"], dtype="string"),
    "category": pd.Series(["a", None, "b", "a", "a"], dtype="category"),
    "Int64": pd.Series([1, None, 2, 1, 1], dtype="Int64"),
    "float": pd.Series([1.0, np.nan, 2.0, 1.0, 1.0]),
    "boolean": pd.Series([True, None, False, True, True], dtype="boolean"),
    "object bool": pd.Series([True, None, False, True, True], dtype=object),
}


@pytest.mark.parametrize("name", list(MISSING_VALUES))
def test_a_null_category_is_one_missing_level_never_the_string_nan(name):
    values = MISSING_VALUES[name]
    levels = CategoryLevels.fit(pd.DataFrame({"c": values}), ["c"])
    vocab = levels.vocab["c"]
    assert vocab[-1] == MISSING_LEVEL and len(vocab) == 3, vocab
    assert not {"nan", "None", "<NA>", "NaN"} & set(vocab)
    codes = levels.codes(pd.DataFrame({"c": values}), "c")
    assert codes.dtype == np.int64
    assert (codes[values.isna().to_numpy()] == vocab.index(MISSING_LEVEL)).all()
    assert (codes[~values.isna().to_numpy()] != vocab.index(MISSING_LEVEL)).all()


def test_the_same_level_in_another_dtype_is_the_same_level():
    assert category_keys(pd.Series([3, 4])).tolist() == ["3", "4"]
    assert category_keys(pd.Series([3.0, np.nan])).tolist() == ["3", None]
    assert category_keys(pd.Series([3, None], dtype="Int64")).tolist() == ["3", None]
    assert category_keys(pd.Series(["3", None], dtype="string")).tolist() == ["3", None]
    assert category_keys(pd.Series([True, 1], dtype=object)).tolist() == ["True", "1"]
    levels = CategoryLevels.fit(pd.DataFrame({"n": [1, 2, 3], "b": [True, False, True]}), ["n", "b"])
    later = pd.DataFrame({"n": pd.Series([3, 1, None], dtype="Int64"),
                          "b": pd.Series([False, None, True], dtype="boolean")})
    assert levels.codes(later, "n").tolist() == [2, 0, -1]  # no nulls at fit: no column for them
    assert levels.codes(later, "b").tolist() == [0, -1, 1]


def test_high_cardinality_keeps_the_most_frequent_and_folds_the_rest_into_other():
    # level i appears 300 - i times: the 10 most frequent are l000..l009
    values = [f"l{i:03d}" for i in range(300) for _ in range(300 - i)]
    levels = CategoryLevels.fit(pd.DataFrame({"c": values}), ["c"], max_levels=10)
    assert levels.vocab["c"] == [f"l{i:03d}" for i in range(10)] + [OTHER_LEVEL]
    assert levels.folded == {"c": 290}
    later = pd.DataFrame({"c": ["l003", "l250", "never-seen", None]})
    assert levels.codes(later, "c").tolist() == [3, 10, 10, 10]  # rare, unseen, null -> other
    assert levels.metadata() == {"category_levels_cap": 10, "category_levels_folded": 290,
                                 "category_levels_folded_by_column": {"c": 290}}
    prepared = levels.prepare(later)
    assert prepared["c"].tolist() == ["l003", OTHER_LEVEL, OTHER_LEVEL, OTHER_LEVEL]


def test_unseen_levels_without_an_other_bucket_encode_as_all_zero():
    train = pd.DataFrame({"x": [1.0, 3.0], "c": ["a", "b"]})
    encoder = TabularEncoder.fit(train, ["x"], ["c"])
    out = encoder.transform(pd.DataFrame({"x": [2.0, 3.0], "c": ["b", "zzz"]}))
    np.testing.assert_array_equal(out[:, 1:], [[0, 1], [0, 0]])


def test_numeric_nulls_are_imputed_with_an_indicator_where_fit_saw_them():
    train = pd.DataFrame({
        "with_nulls": pd.Series([1.0, None, 3.0, None], dtype="Float64"),
        "complete": pd.Series([1, 2, 3, 4], dtype="Int64"),
        "c": ["a", None, "a", "b"],
    })
    encoder = TabularEncoder.fit(train, ["with_nulls", "complete"], ["c"])
    assert encoder.missing_indicators == ["with_nulls"]
    assert encoder.width == 2 + 1 + 3  # numerics, one indicator, a/b/<missing>
    later = pd.DataFrame({"with_nulls": [None, 3.0], "complete": [None, np.inf], "c": [None, "zz"]})
    out = encoder.transform(later)
    assert np.isfinite(out).all()
    np.testing.assert_allclose(out[:, :3], [[0.0, 0.0, 1.0], [1.0, 0.0, 0.0]])
    np.testing.assert_array_equal(out[:, 3:], [[0, 0, 1], [0, 0, 0]])


def test_an_encoder_pickled_before_indicators_and_caps_still_transforms():
    old = TabularEncoder(["x"], ["c"], {"x": 0.0}, {"x": 1.0}, {"c": ["a", "b"]})
    state = {k: v for k, v in vars(old).items() if k not in ("missing_indicators", "levels")}
    restored = TabularEncoder.__new__(TabularEncoder)
    restored.__setstate__(state)
    assert pickle.loads(pickle.dumps(restored)).transform(
        pd.DataFrame({"x": [2.0], "c": ["b"]})).tolist() == [[2.0, 0.0, 1.0]]
