import numpy as np
import pandas as pd
import pytest

from unified_assets.ml.generator import DriftSpec, generate_batch, write_batches


def test_same_seed_and_batch_give_identical_rows():
    pd.testing.assert_frame_equal(generate_batch(3, 500, seed=11), generate_batch(3, 500, seed=11))
    assert not generate_batch(3, 500, seed=11).equals(generate_batch(4, 500, seed=11))


def test_batch_has_label_segments_and_realistic_fraud_rate():
    frame = generate_batch(0, 20_000)
    assert len(frame) == 20_000
    assert set(frame["region"]) == {"NA", "EU", "APAC", "LATAM"}
    assert set(frame["customer_tier"]) == {"standard", "gold", "platinum"}
    assert 0.02 < frame["is_fraud"].mean() < 0.08
    assert frame["transaction_id"].is_unique
    assert (frame["amount"] > 0).all()
    assert frame["hour_of_day"].between(0, 23).all()


def test_label_carries_signal():
    frame = generate_batch(0, 20_000)
    fraud, legit = frame[frame.is_fraud == 1], frame[frame.is_fraud == 0]
    assert fraud["device_trust_score"].mean() < legit["device_trust_score"].mean() - 0.03
    assert fraud["card_present"].mean() < legit["card_present"].mean()


@pytest.mark.parametrize("batch, shifted", [(4, False), (5, True), (9, True)])
def test_drift_applies_from_the_given_batch(batch, shifted):
    drift = DriftSpec(start_batch=5, covariate_shift=1.0, label_shift=1.0)
    clean = generate_batch(batch, 20_000)
    drifted = generate_batch(batch, 20_000, drift=drift)
    amount_ratio = drifted["amount"].mean() / clean["amount"].mean()
    if shifted:
        assert amount_ratio > 1.4
        assert drifted["is_fraud"].mean() > 1.8 * clean["is_fraud"].mean()
        assert (drifted["merchant_category"] == "digital").mean() > 0.2
    else:
        assert np.isclose(amount_ratio, 1.0)


def test_write_batches_writes_parquet_atomically(tmp_path):
    written = write_batches(tmp_path, batches=3, rows=100, first_batch=4)
    assert [p.name for p in written] == [
        "batch-00004.parquet", "batch-00005.parquet", "batch-00006.parquet"
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == [p.name for p in written]
    assert len(pd.read_parquet(written[0])) == 100
