import numpy as np
import pandas as pd
import pytest

from unified_assets.ml.features import TabularEncoder, holdout_mask
from unified_assets.ml.metrics import binary_metrics, segment_metrics


def test_holdout_is_fixed_per_row_and_near_the_fraction():
    ids = pd.Series([f"row-{i}" for i in range(20_000)])
    mask = holdout_mask(ids, 0.2)
    assert abs(mask.mean() - 0.2) < 0.01
    # A row's side does not depend on which other rows are present.
    subset = holdout_mask(ids.iloc[5000:6000].reset_index(drop=True), 0.2)
    assert (subset == mask[5000:6000]).all()


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1])
def test_holdout_fraction_must_be_a_proper_share(fraction):
    with pytest.raises(ValueError, match="holdout fraction"):
        holdout_mask(pd.Series(["a"]), fraction)


def test_encoder_standardises_and_one_hots_with_unknowns_as_zero():
    train = pd.DataFrame({"x": [1.0, 3.0], "c": ["a", "b"]})
    encoder = TabularEncoder.fit(train, ["x"], ["c"])
    out = encoder.transform(pd.DataFrame({"x": [2.0, 3.0], "c": ["b", "zzz"]}))
    assert out.shape == (2, 3)
    np.testing.assert_allclose(out[:, 0], [0.0, 1.0])
    np.testing.assert_array_equal(out[:, 1:], [[0, 1], [0, 0]])


def test_binary_metrics_known_values():
    y = np.array([0, 0, 1, 1])
    scores = np.array([0.1, 0.6, 0.4, 0.9])
    m = binary_metrics(y, scores, threshold=0.5)
    assert m["roc_auc"] == pytest.approx(0.75)
    assert m["recall"] == pytest.approx(0.5)
    assert m["precision"] == pytest.approx(0.5)
    assert m["brier"] == pytest.approx((0.01 + 0.36 + 0.36 + 0.01) / 4)
    assert (m["rows"], m["positives"]) == (4, 2)


def test_single_class_auc_is_undefined_not_zero():
    m = binary_metrics(np.array([0, 0, 0]), np.array([0.1, 0.2, 0.3]))
    assert m["roc_auc"] is None and m["pr_auc"] is None
    with pytest.raises(ValueError, match="zero rows"):
        binary_metrics(np.array([]), np.array([]))


def test_segment_metrics_one_row_per_value():
    frame = pd.DataFrame({"region": ["EU", "EU", "NA", "NA"]})
    rows = segment_metrics(frame, np.array([0, 1, 0, 1]), np.array([0.2, 0.8, 0.7, 0.3]), ["region"])
    by_value = {r["value"]: r for r in rows}
    assert by_value["EU"]["roc_auc"] == 1.0
    assert by_value["NA"]["roc_auc"] == 0.0
    assert by_value["EU"]["rows"] == 2


def test_segment_values_read_as_codes_and_missing_never_as_nan():
    """A 0/1 segment that pandas loaded as float (one null) is named '0'/'1', as profiles and
    drift name it, and its null rows form their own '(missing)' segment, not 'nan'."""
    frame = pd.DataFrame({"smoker": [0.0, 1.0, None, 1.0, 0.0, None]})
    rows = segment_metrics(frame, np.array([0, 1, 0, 1, 1, 0]),
                           np.array([0.1, 0.9, 0.2, 0.8, 0.3, 0.4]), ["smoker"])
    assert {r["value"]: r["rows"] for r in rows} == {"0": 2, "1": 2, "(missing)": 2}
