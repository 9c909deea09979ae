import json

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from scipy.spatial import distance

from unified_assets.ml.dataset_spec import PAYMENTS_SPEC_DATA
from unified_assets.ml.drift import compute_drift, drift_markdown, verdict_agreement
from unified_assets.ml.evidently_report import evidently_verdicts
from unified_assets.ml.generator import DriftSpec, generate_batch
from unified_assets.ml.profiles import build_reference_profile, merge_profiles, profile_batch

NUMERIC = PAYMENTS_SPEC_DATA["numeric_features"]
CATEGORICAL = PAYMENTS_SPEC_DATA["categorical_features"]
# Normal location shifts and lognormal scale changes around Evidently's W threshold of 0.1.
SHIFTS = (0.0, 0.06, 0.085, 0.115, 0.14, 0.3)
SYNTHETIC_NUMERIC = [f"shift_{i}" for i in range(len(SHIFTS))] + [f"tail_{i}" for i in range(len(SHIFTS))]
SYNTHETIC_CATEGORICAL = ["mix_small", "mix_near"]


def _with_synthetic(frame: pd.DataFrame, shifted: bool, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = len(frame)
    out = frame.copy()
    for i, shift in enumerate(SHIFTS):
        out[f"shift_{i}"] = rng.normal(shift if shifted else 0.0, 1.0, rows)
        out[f"tail_{i}"] = rng.lognormal(0.0, 1.0 + (shift if shifted else 0.0), rows)
    letters = np.array(list("abcde"), dtype=object)
    base = np.array([0.3, 0.25, 0.2, 0.15, 0.1])
    moved = np.array([0.22, 0.25, 0.2, 0.15, 0.18])  # JS distance ~0.09: close to 0.1
    out["mix_small"] = rng.choice(letters, rows, p=base)
    out["mix_near"] = rng.choice(letters, rows, p=moved if shifted else base)
    return out


@pytest.fixture(scope="module")
def evidently_loaded():
    """Import Evidently once per module (~5-8 s)."""
    import evidently  # noqa: F401

    return True


def _calm(batch: int, rows: int) -> pd.DataFrame:
    """Generator features without drift, as extra `calm_*` columns (one Evidently run, not two)."""
    frame = generate_batch(batch, rows)[NUMERIC + CATEGORICAL]
    return frame.rename(columns=lambda c: f"calm_{c}")


CALM = [f"calm_{c}" for c in NUMERIC + CATEGORICAL]


def _scenario(name: str) -> tuple[pd.DataFrame, pd.DataFrame, list[str], list[str]]:
    if name == "large":  # > 1000 reference rows: Wasserstein / Jensen-Shannon
        spec = DriftSpec(start_batch=21, covariate_shift=0.35, label_shift=0.8)
        ref, cur = generate_batch(20, 5000, drift=spec), generate_batch(21, 5000, drift=spec)
        ref, cur = pd.concat([ref, _calm(10, 5000)], axis=1), pd.concat([cur, _calm(11, 5000)], axis=1)
        calm_numeric, calm_categorical = CALM[: len(NUMERIC)], CALM[len(NUMERIC):]
    else:  # small data: Evidently's K-S / chi-square / z-test regime (reference <= 1000 rows)
        spec = DriftSpec(start_batch=31, covariate_shift=0.4)
        ref, cur = generate_batch(30, 800, drift=spec), generate_batch(31, 800, drift=spec)
        calm_numeric, calm_categorical = [], []
    ref, cur = _with_synthetic(ref, False, seed=1), _with_synthetic(cur, True, seed=2)
    return (ref, cur, NUMERIC + SYNTHETIC_NUMERIC + calm_numeric,
            CATEGORICAL + SYNTHETIC_CATEGORICAL + calm_categorical)


@pytest.mark.parametrize("scenario", ["large", "small_data"])
def test_verdicts_and_values_match_evidently(evidently_loaded, scenario):
    ref, cur, numeric, categorical = _scenario(scenario)
    reference = build_reference_profile(ref, numeric, categorical)
    ours = compute_drift(reference, profile_batch(cur, reference))
    theirs = evidently_verdicts(ref, cur, numeric, categorical)

    assert [c.column for c in ours.columns] == [c.column for c in theirs.columns]
    assert verdict_agreement(ours, theirs) == 1.0, [
        (a.column, a.value, b.value) for a, b in zip(ours.columns, theirs.columns, strict=True)
        if a.drifted != b.drifted
    ]
    assert ours.share_of_drifted_columns == pytest.approx(theirs.share_of_drifted_columns)
    assert ours.dataset_drift == theirs.dataset_drift
    for a, b in zip(ours.columns, theirs.columns, strict=True):
        assert (a.statistic, a.threshold) == (b.statistic, b.threshold), a.column
        if a.stattest == "wasserstein":
            # Exact but for CDF crossings inside one bin; measured error <= 0.0015.
            assert a.value == pytest.approx(b.value, abs=0.003), a.column
        else:  # JS, chi-square, z: exact from frequencies; K-S: exact on <= 1000-row references
            assert a.value == pytest.approx(b.value, rel=1e-9, abs=1e-12), a.column
    if scenario == "large":  # strong effects drift, absent ones do not; the rest is near 0.1
        assert {"txn_count_24h", "distance_from_home_km", "device_trust_score", "shift_5", "tail_5"} <= set(
            ours.drifted_columns
        )
        absent = {"shift_0", "tail_0", "hour_of_day", "account_age_days", "channel", "mix_small", *CALM}
        assert absent.isdisjoint(ours.drifted_columns)
        assert not ours.dataset_drift  # fewer than half of the 40 columns
        # The near-threshold columns really are near it, so this test can tell 0.1 from 0.09.
        near = [c.column for c in theirs.columns if abs(c.value - 0.1) < 0.02]
        assert len(near) >= 5, near
    if scenario == "small_data":
        assert {c.stattest for c in ours.columns} == {"ks", "chisquare", "z"}


def test_wasserstein_is_exact_for_discrete_columns_and_close_for_continuous():
    rng = np.random.default_rng(3)
    # k: every current value is a reference value (an edge), so W has no in-bin crossing.
    ref = pd.DataFrame({"k": rng.integers(0, 10, 5000).astype(float), "x": rng.normal(0, 1, 5000)})
    cur = pd.DataFrame({"k": rng.binomial(9, 0.55, 4000).astype(float), "x": rng.normal(0.1, 1.1, 4000)})
    reference = build_reference_profile(ref, ["k", "x"], [])
    result = compute_drift(reference, profile_batch(cur, reference))
    for column, tolerance in (("k", 1e-12), ("x", 2e-3)):
        expected = stats.wasserstein_distance(ref[column], cur[column]) / np.std(ref[column])
        assert result.column(column).value == pytest.approx(expected, abs=tolerance)
        assert result.column(column).stattest == "wasserstein"


def test_jensen_shannon_and_few_valued_numerics():
    ref = pd.DataFrame({"c": ["a"] * 3000 + ["b"] * 2000, "f": [0.0] * 4000 + [1.0] * 1000})
    cur = pd.DataFrame({"c": ["a"] * 2000 + ["b"] * 2500 + ["new"] * 500, "f": [0.0] * 3000 + [1.0] * 2000})
    reference = build_reference_profile(ref, ["f"], ["c"])
    result = compute_drift(reference, profile_batch(cur, reference))
    c, f = result.column("c"), result.column("f")
    assert c.stattest == f.stattest == "jensenshannon"
    assert c.value == pytest.approx(distance.jensenshannon([0.6, 0.4, 0.0], [0.4, 0.5, 0.1]))
    assert f.value == pytest.approx(distance.jensenshannon([0.8, 0.2], [0.6, 0.4]))
    assert c.drifted and f.drifted


def test_thresholds_override_like_evidently_and_dataset_share_is_inclusive():
    rng = np.random.default_rng(4)
    ref = pd.DataFrame({"x": rng.normal(0, 1, 4000), "y": rng.normal(0, 1, 4000)})
    cur = pd.DataFrame({"x": rng.normal(0.2, 1, 4000), "y": rng.normal(0.0, 1, 4000)})
    reference = build_reference_profile(ref, ["x", "y"], [])
    current = profile_batch(cur, reference)
    default = compute_drift(reference, current)
    assert default.drifted_columns == ["x"]
    assert default.share_of_drifted_columns == 0.5 and default.dataset_drift  # 0.5 >= 0.5
    assert not compute_drift(reference, current, drift_share=0.51).dataset_drift
    assert compute_drift(reference, current, num_threshold=0.5).drifted_columns == []
    overridden = compute_drift(reference, current, threshold=0.5, per_column_threshold={"y": 0.0})
    assert overridden.drifted_columns == ["y"]


def test_merged_training_reference_and_a_missing_layout():
    reference = build_reference_profile(generate_batch(0, 3000), NUMERIC, CATEGORICAL)
    window = merge_profiles([profile_batch(generate_batch(i, 2000), reference) for i in range(1, 4)])
    spec = DriftSpec(start_batch=5, covariate_shift=0.6)
    drifted = profile_batch(generate_batch(5, 2000, drift=spec), reference)
    with pytest.raises(ValueError, match="no layout"):
        compute_drift(window, drifted)
    result = compute_drift(window, drifted, layout=reference["layout"])
    assert result.dataset_drift is False and result.number_of_drifted_columns >= 4
    calm_batch = profile_batch(generate_batch(6, 2000), reference)
    calm = compute_drift(window, calm_batch, layout=reference["layout"])
    assert calm.number_of_drifted_columns == 0


def test_result_is_json_and_renders_markdown_and_empty_columns_count_as_drift():
    reference = build_reference_profile(pd.DataFrame({"x": np.arange(2000.0), "c": ["a", "b"] * 1000}),
                                        ["x"], ["c"])
    current = profile_batch(pd.DataFrame({"x": [np.nan] * 10, "c": ["a"] * 10}), reference)
    result = compute_drift(reference, current)
    assert result.column("x").stattest == "empty" and result.column("x").drifted
    data = json.loads(json.dumps(result.to_dict(), allow_nan=False))
    assert data["number_of_drifted_columns"] == 2 and data["dataset_drift"] is True
    table = drift_markdown(result)
    assert table.splitlines()[0] == "| column | kind | statistic | value | threshold | drift |"
    assert "| c | categorical | Jensen-Shannon distance | 0.4645 | 0.1 | **yes** |" in table
    assert "2 of 2 columns drifted" in table


def test_batches_that_each_fixed_their_own_layout_are_judged_on_one(tmp_path):
    """First ingestions that ran at the same time each fixed a layout; the drift decision
    profiles the odd ones again from their rows instead of failing."""
    from unified_assets.ml.dataset_spec import payments_spec
    from unified_assets.ml.drift_judgement import batch_profile, judge_drift, on_one_layout
    from unified_assets.policy import DriftPolicy

    spec = payments_spec(tmp_path)
    frames = {f"batch-{i:05d}": generate_batch(i, 800) for i in range(3)}
    alone = {b: batch_profile(f, spec, None) for b, f in frames.items()}
    assert len({p["layout_id"] for p in alone.values()}) == 3
    with pytest.raises(ValueError, match="different layouts"):
        merge_profiles(alone.values())

    read = []
    same, redone = on_one_layout(alone, lambda b: read.append(b) or frames[b])
    assert redone == read == ["batch-00001", "batch-00002"]
    first = alone["batch-00000"]
    for batch, frame in frames.items():
        expected = batch_profile(frame, spec, first)  # as if ingested one after the other
        assert same[batch] == expected, batch
    drifted = generate_batch(3, 800, drift=DriftSpec(start_batch=3, covariate_shift=3.0))
    result = judge_drift(list(same.values())[:2], batch_profile(drifted, spec, first),
                         DriftPolicy())
    assert result["dataset_drift"] is True
    # Already on one layout: nothing is read again.
    again, none = on_one_layout(same, lambda b: pytest.fail(f"read {b}"))
    assert none == [] and again == same
