"""Seeded generator of payment transactions with a fraud label and optional drift.

The signal is real (fraud probability is a logistic function of the features), so
models learn something and drift changes what they see. No dagster imports here.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

REGIONS = ("NA", "EU", "APAC", "LATAM")
REGION_WEIGHTS = (0.35, 0.30, 0.22, 0.13)
TIERS = ("standard", "gold", "platinum")
TIER_WEIGHTS = (0.70, 0.22, 0.08)
MERCHANT_CATEGORIES = ("grocery", "fuel", "fashion", "electronics", "travel", "gaming", "digital")
MERCHANT_WEIGHTS = (0.28, 0.14, 0.16, 0.12, 0.10, 0.10, 0.10)
MERCHANT_RISK = {
    "grocery": -0.6, "fuel": -0.3, "fashion": 0.0, "electronics": 0.7,
    "travel": 0.4, "gaming": 0.8, "digital": 0.9,
}
CHANNELS = ("pos", "web", "app")
CHANNEL_WEIGHTS = (0.45, 0.35, 0.20)
CHANNEL_RISK = {"pos": -0.5, "web": 0.6, "app": 0.1}
TARGET = "is_fraud"
ID_COLUMN = "transaction_id"
LabelMode = Literal["inline", "late", "only"]


@dataclass(frozen=True)
class DriftSpec:
    """Drift injected from batch `start_batch` on (0-based); zero strengths mean none."""

    start_batch: int | None = None
    covariate_shift: float = 0.0
    label_shift: float = 0.0

    def active(self, batch_index: int) -> bool:
        return self.start_batch is not None and batch_index >= self.start_batch


def generate_batch(
    batch_index: int,
    rows: int,
    seed: int = 7,
    drift: DriftSpec | None = None,
    start_time: pd.Timestamp | None = None,
) -> pd.DataFrame:
    """One batch of transactions; the same (seed, batch_index) always gives the same rows."""
    drift = drift or DriftSpec()
    rng = np.random.default_rng([seed, batch_index])
    shifted = drift.active(batch_index)
    cov = drift.covariate_shift if shifted else 0.0
    label_bias = drift.label_shift if shifted else 0.0

    region = rng.choice(REGIONS, size=rows, p=REGION_WEIGHTS)
    tier = rng.choice(TIERS, size=rows, p=TIER_WEIGHTS)
    merchant_p = np.array(MERCHANT_WEIGHTS)
    if cov:
        # Covariate shift: the mix moves towards risky digital/gaming merchants.
        merchant_p = merchant_p * np.array([1, 1, 1, 1, 1, 1 + 2 * cov, 1 + 3 * cov])
        merchant_p = merchant_p / merchant_p.sum()
    merchant = rng.choice(MERCHANT_CATEGORIES, size=rows, p=merchant_p)
    channel = rng.choice(CHANNELS, size=rows, p=CHANNEL_WEIGHTS)

    tier_scale = np.select([tier == "gold", tier == "platinum"], [1.6, 2.8], 1.0)
    amount = np.round(rng.lognormal(mean=3.6 + 0.5 * cov, sigma=1.0, size=rows) * tier_scale, 2)
    account_age_days = rng.gamma(shape=2.0, scale=300.0, size=rows).astype(np.int64)
    txn_count_24h = rng.poisson(lam=2.0 + 1.5 * cov, size=rows)
    avg_amount_30d = np.round(amount * rng.lognormal(0.0, 0.4, size=rows), 2)
    distance_km = np.round(rng.exponential(scale=25.0 * (1 + cov), size=rows), 1)
    hour = rng.integers(0, 24, size=rows)
    is_international = (rng.random(rows) < 0.08 + 0.05 * cov).astype(np.int64)
    card_present = ((channel == "pos") & (rng.random(rows) < 0.95)).astype(np.int64)
    device_trust = np.clip(rng.beta(5, 2, size=rows) - 0.1 * cov, 0.0, 1.0).round(4)

    night = ((hour <= 5) | (hour >= 23)).astype(float)
    logit = (
        -4.1
        + 0.55 * np.log1p(amount / np.maximum(avg_amount_30d, 1.0))
        + 0.35 * np.log1p(txn_count_24h)
        + 0.012 * np.minimum(distance_km, 300)
        - 0.0012 * np.minimum(account_age_days, 1500)
        + 0.9 * is_international
        - 0.7 * card_present
        - 2.2 * (device_trust - 0.7)
        + 0.6 * night
        + np.vectorize(MERCHANT_RISK.get)(merchant)
        + np.vectorize(CHANNEL_RISK.get)(channel)
        - 0.25 * (tier == "platinum")
        + 0.2 * (region == "LATAM")
        + label_bias
    )
    is_fraud = (rng.random(rows) < 1.0 / (1.0 + np.exp(-logit))).astype(np.int64)

    start = start_time or pd.Timestamp("2026-01-01T00:00:00Z")
    batch_start = start + pd.Timedelta(hours=batch_index)
    offsets = np.sort(rng.integers(0, 3600, size=rows))
    return pd.DataFrame(
        {
            "transaction_id": [f"b{batch_index:05d}-{i:07d}" for i in range(rows)],
            "event_time": batch_start + pd.to_timedelta(offsets, unit="s"),
            "amount": amount,
            "avg_amount_30d": avg_amount_30d,
            "account_age_days": account_age_days,
            "txn_count_24h": txn_count_24h.astype(np.int64),
            "distance_from_home_km": distance_km,
            "hour_of_day": hour.astype(np.int64),
            "is_international": is_international,
            "card_present": card_present,
            "device_trust_score": device_trust,
            "merchant_category": merchant,
            "channel": channel,
            "region": region,
            "customer_tier": tier,
            "is_fraud": is_fraud,
        }
    )


def batch_name(batch_index: int) -> str:
    return f"batch-{batch_index:05d}"


def write_batches(
    landing_dir: Path,
    batches: int,
    rows: int,
    seed: int = 7,
    first_batch: int = 0,
    drift: DriftSpec | None = None,
    labels: LabelMode = "inline",
) -> list[Path]:
    """Write batches as Parquet; each appears atomically (temp file, then rename).

    labels: "inline" writes labelled batches; "late" writes them without the label column;
    "only" writes just the labels (id + label) of the same seeded batches into
    `<landing_dir>/labels/`, as ground truth arriving after a "late" batch.
    """
    folder = landing_dir / "labels" if labels == "only" else landing_dir
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for index in range(first_batch, first_batch + batches):
        frame = generate_batch(index, rows, seed=seed, drift=drift)
        if labels == "late":
            frame = frame.drop(columns=[TARGET])
        elif labels == "only":
            frame = frame[[ID_COLUMN, TARGET]]
        final = folder / f"{batch_name(index)}.parquet"
        partial = folder / f".{final.name}.partial"
        frame.to_parquet(partial, index=False)
        os.replace(partial, final)
        written.append(final)
    return written
