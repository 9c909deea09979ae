"""Training-set assembly: a fixed, hash-based holdout and a numeric encoding for torch."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import pandas as pd


def holdout_mask(row_ids: pd.Series, fraction: float, salt: str = "holdout-v1") -> np.ndarray:
    """True for holdout rows. A row's side depends only on its id, so the holdout of a
    batch never changes between retrains and champion and challenger see the same rows."""
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"holdout fraction must be in (0, 1), got {fraction}")
    cutoff = int(fraction * 10_000)
    buckets = np.fromiter(
        (
            int.from_bytes(hashlib.blake2b(f"{salt}:{r}".encode(), digest_size=4).digest()) % 10_000
            for r in row_ids
        ),
        dtype=np.int64,
        count=len(row_ids),
    )
    return buckets < cutoff


@dataclass
class TabularEncoder:
    """Standardised numerics plus one-hot categoricals; unknown categories map to all-zero."""

    numeric: list[str]
    categorical: list[str]
    means: dict[str, float]
    stds: dict[str, float]
    vocab: dict[str, list[str]]

    @classmethod
    def fit(cls, frame: pd.DataFrame, numeric: list[str], categorical: list[str]) -> TabularEncoder:
        means = {c: float(frame[c].mean()) for c in numeric}
        stds = {c: float(frame[c].std(ddof=0)) or 1.0 for c in numeric}
        vocab = {c: sorted(frame[c].astype(str).unique().tolist()) for c in categorical}
        return cls(numeric, categorical, means, stds, vocab)

    @property
    def width(self) -> int:
        return len(self.numeric) + sum(len(v) for v in self.vocab.values())

    def transform(self, frame: pd.DataFrame) -> np.ndarray:
        out = np.zeros((len(frame), self.width), dtype=np.float32)
        for i, column in enumerate(self.numeric):
            values = frame[column].to_numpy(dtype=np.float64, na_value=self.means[column])
            out[:, i] = (values - self.means[column]) / self.stds[column]
        offset = len(self.numeric)
        for column in self.categorical:
            categories = self.vocab[column]
            codes = pd.Categorical(frame[column].astype(str), categories=categories).codes
            known = codes >= 0
            out[np.nonzero(known)[0], offset + codes[known]] = 1.0
            offset += len(categories)
        return out
