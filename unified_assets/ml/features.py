"""Training-set assembly: a fixed, hash-based holdout, category levels both models share, and a
numeric encoding for torch."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

# One level for "no value" and one for "a level not kept at fit" (rare, or first seen at predict).
MISSING_LEVEL = "<missing>"
OTHER_LEVEL = "<other>"
# Kept levels per categorical column, the most frequent first; the rest share OTHER_LEVEL. Below
# HistGradientBoosting's 255-bin limit for native categoricals once <other> and <missing> are added.
DEFAULT_MAX_LEVELS = 100


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


def _level_key(value: object) -> str:
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value))
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return str(int(value))  # an int column that pandas widened to float because of a null
    return str(value)


def category_keys(values: pd.Series) -> pd.Series:
    """One string per level whatever dtype carried it (object, string, category, int, float,
    bool, nullable), so 3, 3.0 and "3" agree between fit and predict; None where missing
    (None, NaN, pd.NA, NaT alike), never the literal "nan"."""
    from pandas.api.types import infer_dtype

    missing = values.isna().to_numpy()
    kind = infer_dtype(values, skipna=True)
    if kind == "categorical":  # key the few categories, then index them by code
        categories = category_keys(pd.Series(values.cat.categories)).to_numpy(dtype=object)
        codes = values.cat.codes.to_numpy()
        keys = np.where(codes >= 0, categories[codes], None)
        return pd.Series(keys, index=values.index, dtype=object)
    if kind in ("string", "integer", "boolean"):  # fast paths for the common, uniform columns
        keys = np.full(len(values), None, dtype=object)
        present = values[~missing]
        if kind == "integer":
            present = present.astype("int64")
        elif kind == "boolean":
            present = present.astype(bool)
        keys[~missing] = present.astype(str).to_numpy(dtype=object)
        return pd.Series(keys, index=values.index, dtype=object)
    raw = values.to_numpy(dtype=object)
    keys = np.full(len(raw), None, dtype=object)
    seen: dict[tuple[type, object], str] = {}
    for i in np.flatnonzero(~missing):
        value = raw[i]
        token = (type(value), value)  # the type too: True == 1 but they are different levels
        key = seen.get(token)
        if key is None:
            key = seen[token] = _level_key(value)
        keys[i] = key
    return pd.Series(keys, index=values.index, dtype=object)


def level_codes(values: pd.Series, vocab: list[str]) -> np.ndarray:
    """int64 position of each value in `vocab`, -1 for none. A null goes to MISSING_LEVEL and a
    level not in `vocab` to OTHER_LEVEL when the vocabulary has them (a state seen at fit)."""
    keys = category_keys(values).to_numpy(dtype=object)
    missing = pd.isna(keys)
    codes = pd.Index(vocab, dtype=object).get_indexer(keys).astype(np.int64)
    other = vocab.index(OTHER_LEVEL) if OTHER_LEVEL in vocab else -1
    codes[(codes < 0) & ~missing] = other
    codes[missing] = vocab.index(MISSING_LEVEL) if MISSING_LEVEL in vocab else other
    return codes


@dataclass(frozen=True)
class CategoryLevels:
    """Per categorical column: the levels kept at fit (top `max_levels` by frequency, then
    <other> if any were folded, then <missing> if nulls were seen) and how many were folded.

    Hand-written rather than OneHotEncoder/OrdinalEncoder(max_categories=...): those treat None
    and NaN as two levels, fail on pd.NA (string/boolean dtypes), cannot send unseen levels to the
    infrequent bucket (OrdinalEncoder) and may fold a rare "missing" into it; and one vocabulary
    here serves both candidates and their metadata."""

    vocab: dict[str, list[str]]
    folded: dict[str, int]
    max_levels: int = DEFAULT_MAX_LEVELS

    @classmethod
    def fit(cls, frame: pd.DataFrame, columns: list[str],
            max_levels: int = DEFAULT_MAX_LEVELS) -> CategoryLevels:
        if max_levels < 1:
            raise ValueError(f"max_levels must be at least 1, got {max_levels}")
        vocab: dict[str, list[str]] = {}
        folded: dict[str, int] = {}
        for column in columns:
            keys = category_keys(frame[column])
            counts = keys.value_counts(dropna=True)
            ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
            kept = sorted(level for level, _ in ranked[:max_levels])
            folded[column] = len(ranked) - len(kept)
            vocab[column] = (kept + ([OTHER_LEVEL] if folded[column] else [])
                             + ([MISSING_LEVEL] if keys.isna().any() else []))
        return cls(vocab, folded, max_levels)

    def codes(self, frame: pd.DataFrame, column: str) -> np.ndarray:
        return level_codes(frame[column], self.vocab[column])

    def prepare(self, frame: pd.DataFrame) -> pd.DataFrame:
        """The frame with each categorical column as its kept level (str), NaN where none."""
        out = frame.copy()
        for column, vocab in self.vocab.items():
            codes = self.codes(frame, column)
            labels = np.asarray(vocab + [np.nan], dtype=object)
            out[column] = labels[codes]  # code -1 picks the trailing NaN
        return out

    def metadata(self) -> dict[str, object]:
        """What the model's metadata says about the cap: the cap and the levels folded."""
        return {
            "category_levels_cap": self.max_levels,
            "category_levels_folded": int(sum(self.folded.values())),
            "category_levels_folded_by_column": {c: n for c, n in self.folded.items() if n},
        }


def numeric_matrix(frame: pd.DataFrame, columns: list[str]) -> np.ndarray:
    """float64 values of numeric columns of any dtype (Int64/boolean/object too); NaN where
    missing or not finite."""
    if not columns:
        return np.zeros((len(frame), 0), dtype=np.float64)
    values = frame[columns].astype("float64").to_numpy(dtype=np.float64, na_value=np.nan)
    return np.where(np.isfinite(values), values, np.nan)


@dataclass
class TabularEncoder:
    """Standardised numerics (nulls imputed with the training mean, plus a missing indicator for
    each column that had nulls at fit), then one one-hot block per categorical (CategoryLevels).

    Imputation by hand, not SimpleImputer(add_indicator=True): the encoder is pickled into the
    torch pyfunc, and a mean and a mask do not warrant scikit-learn in that model's environment."""

    numeric: list[str]
    categorical: list[str]
    means: dict[str, float]
    stds: dict[str, float]
    vocab: dict[str, list[str]]
    missing_indicators: list[str] = field(default_factory=list)
    levels: CategoryLevels | None = None

    def __setstate__(self, state: dict) -> None:
        # Encoders pickled into registered models before indicators and level caps existed.
        self.__dict__.update({"missing_indicators": [], "levels": None} | state)

    @classmethod
    def fit(cls, frame: pd.DataFrame, numeric: list[str], categorical: list[str],
            max_levels: int = DEFAULT_MAX_LEVELS) -> TabularEncoder:
        values = numeric_matrix(frame, numeric)
        present = ~np.isnan(values)
        counts = present.sum(axis=0)
        means = np.where(present, values, 0.0).sum(axis=0) / np.maximum(counts, 1)
        spread = np.where(present, values - means, 0.0)
        stds = np.sqrt((spread**2).sum(axis=0) / np.maximum(counts, 1))
        levels = CategoryLevels.fit(frame, categorical, max_levels)
        return cls(
            numeric, categorical,
            means={c: float(m) for c, m in zip(numeric, means, strict=True)},
            stds={c: float(s) or 1.0 for c, s in zip(numeric, stds, strict=True)},
            vocab=levels.vocab,
            missing_indicators=[c for c, n in zip(numeric, counts, strict=True) if n < len(frame)],
            levels=levels,
        )

    @property
    def width(self) -> int:
        return (len(self.numeric) + len(self.missing_indicators)
                + sum(len(v) for v in self.vocab.values()))

    def transform(self, frame: pd.DataFrame) -> np.ndarray:
        out = np.zeros((len(frame), self.width), dtype=np.float32)
        values = numeric_matrix(frame, self.numeric)
        means = np.array([self.means[c] for c in self.numeric], dtype=np.float64)
        stds = np.array([self.stds[c] for c in self.numeric], dtype=np.float64)
        missing = np.isnan(values)
        out[:, : len(self.numeric)] = (np.where(missing, means, values) - means) / stds
        offset = len(self.numeric)
        for column in self.missing_indicators:
            out[:, offset] = missing[:, self.numeric.index(column)]
            offset += 1
        rows = np.arange(len(frame), dtype=np.int64)
        for column in self.categorical:
            vocab = self.vocab[column]
            codes = level_codes(frame[column], vocab)  # int64: offset + code never wraps
            known = codes >= 0
            out[rows[known], offset + codes[known]] = 1.0
            offset += len(vocab)
        return out
