"""Per-column data drift between two column profiles, with Evidently 0.7.23's DataDriftPreset defaults.

Works on profiles (`unified_assets.ml.profiles`), never on rows, so a sensor decides in
milliseconds. The statistics, their selection and their thresholds are Evidently's
(`evidently/legacy/calculations/stattests/registry.py::_get_default_stattest`):

reference rows (non-null) > 1000 ("large data", the regime that matters for batches):
  numeric, > 5 distinct values in reference+current -> Wasserstein distance normed by the
      reference std (`max(np.std(ref), 0.001)`), drift if value >= 0.1
      (`wasserstein_distance_norm.py`);
  numeric with <= 5 distinct values, and categorical -> Jensen-Shannon distance (natural log)
      of the value frequencies, drift if value >= 0.1 (`jensenshannon.py`, `utils.get_binned_data`);
reference rows <= 1000 ("small data"):
  numeric, > 5 distinct values -> two-sample K-S p-value, drift if p <= 0.05 (`ks_stattest.py`);
  <= 5 distinct (numeric) or any categorical: > 2 distinct -> chi-square p-value, drift if
      p < 0.05 (`chisquare_stattest.py`); <= 2 distinct -> two-proportion z-test p-value,
      drift if p < 0.05 (`z_stattest.py`).
NaN and +-inf are dropped first (`legacy/calculations/data_drift.py::get_one_column_drift`).
Dataset drift: share of drifted columns >= `drift_share`, default 0.5
(`data_drift.py::get_dataset_drift`, `presets/drift.py::DataDriftPreset.drift_share`).
Threshold overrides resolve like Evidently's (`legacy/utils/data_drift_utils.py::
_calculate_threshold`): per column, then by kind (num/cat), then for all, then the test's default.

Column kinds are the ones declared (as in Evidently's DataDefinition); Evidently's automatic
column typing is not reproduced.

Exactness on profiles (measured against Evidently in tests/unified_assets/ml/test_drift.py
and bench/drift.py): value frequencies, hence JS, chi-square and z-test, are exact; the
distinct-value counts that pick the test are exact (tracked up to 16 values). Categories
outside the reference vocabulary (top 50) share one bucket: exact for JS and chi-square
when the vocabulary holds every reference category, a slight under-estimate otherwise.
Wasserstein is exact except where the two CDFs cross inside one bin (an under-estimate,
measured <= 0.0015 with the default 64 bins; zero when both sides only hold edge values).
K-S reads the ECDFs at the edges and just left of them: exact when the layout is "exact"
(a reference of <= 1000 rows, the only regime where Evidently uses K-S, or <= bins + 1
distinct values), an approximation otherwise; its p-value uses scipy's exact method when
both sides have <= 10,000 rows, as `ks_2samp(method="auto")` does, else the asymptotic one.
A column empty in the current batch (all null) is reported drifted with value None and
stattest "empty" (Evidently raises on it).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np

from unified_assets.ml.profiles import VALUE_CAP, bin_distance_sums, layout_of

SMALL_DATA_ROWS = 1000  # reference rows at or below which Evidently uses hypothesis tests
FEW_VALUES = 5  # numeric columns with at most this many distinct values are treated like categories
DEFAULT_DRIFT_SHARE = 0.5

# Evidently's StatTest name -> (display name, default threshold, drift when "ge"/"le"/"lt").
STATTESTS: dict[str, tuple[str, float, str]] = {
    "wasserstein": ("Wasserstein distance (normed)", 0.1, "ge"),
    "jensenshannon": ("Jensen-Shannon distance", 0.1, "ge"),
    "ks": ("K-S p_value", 0.05, "le"),
    "chisquare": ("chi-square p_value", 0.05, "lt"),
    "z": ("Z-test p_value", 0.05, "lt"),
}
_OTHER = "__other__"


@dataclass(frozen=True)
class ColumnDrift:
    column: str
    kind: str  # "numeric" | "categorical"
    stattest: str  # a key of STATTESTS, or "empty" (no current values)
    statistic: str  # Evidently's display name of the test
    value: float | None
    threshold: float
    drifted: bool
    reference_count: int
    current_count: int


@dataclass
class DriftResult:
    columns: list[ColumnDrift]
    drift_share: float = DEFAULT_DRIFT_SHARE
    number_of_columns: int = field(init=False)
    number_of_drifted_columns: int = field(init=False)
    share_of_drifted_columns: float = field(init=False)
    dataset_drift: bool = field(init=False)

    def __post_init__(self) -> None:
        self.number_of_columns = len(self.columns)
        self.number_of_drifted_columns = sum(c.drifted for c in self.columns)
        self.share_of_drifted_columns = (
            self.number_of_drifted_columns / self.number_of_columns if self.columns else 0.0
        )
        self.dataset_drift = bool(self.columns) and self.share_of_drifted_columns >= self.drift_share

    @property
    def drifted_columns(self) -> list[str]:
        return [c.column for c in self.columns if c.drifted]

    def column(self, name: str) -> ColumnDrift:
        for row in self.columns:
            if row.column == name:
                return row
        raise KeyError(name)

    def to_dict(self) -> dict:
        """Plain JSON-serialisable dict (json.dumps works on it as is)."""
        return {
            "columns": [asdict(c) for c in self.columns],
            "drift_share": self.drift_share,
            "number_of_columns": self.number_of_columns,
            "number_of_drifted_columns": self.number_of_drifted_columns,
            "share_of_drifted_columns": self.share_of_drifted_columns,
            "dataset_drift": self.dataset_drift,
        }

    def to_markdown(self) -> str:
        return drift_markdown(self)


def drift_markdown(result: DriftResult) -> str:
    """A markdown table, one row per column, then the dataset-level verdict."""
    lines = [
        "| column | kind | statistic | value | threshold | drift |",
        "|---|---|---|---:|---:|---|",
    ]
    for c in result.columns:
        value = "-" if c.value is None else f"{c.value:.4g}"
        lines.append(
            f"| {c.column} | {c.kind} | {c.statistic} | {value} | {c.threshold:g} | "
            f"{'**yes**' if c.drifted else 'no'} |"
        )
    verdict = "detected" if result.dataset_drift else "not detected"
    lines.append("")
    lines.append(
        f"Dataset drift {verdict}: {result.number_of_drifted_columns} of {result.number_of_columns} "
        f"columns drifted (share {result.share_of_drifted_columns:.3f}, threshold {result.drift_share:g})."
    )
    return "\n".join(lines)


def compute_drift(
    reference: dict,
    current: dict,
    *,
    layout: dict | None = None,
    columns: list[str] | None = None,
    threshold: float | None = None,
    num_threshold: float | None = None,
    cat_threshold: float | None = None,
    per_column_threshold: dict[str, float] | None = None,
    drift_share: float = DEFAULT_DRIFT_SHARE,
) -> DriftResult:
    """Drift of `current` against `reference` (profiles sharing one layout).

    `layout` defaults to the layout carried by `reference` (or `current`), i.e. pass a
    reference profile from `build_reference_profile`, or a merge including one, or the
    layout explicitly when both are merged batch profiles. Thresholds override Evidently's
    defaults like DataDriftPreset's `threshold`/`num_threshold`/`cat_threshold`/
    `per_column_threshold`; `drift_share` is the dataset-level share (>=)."""
    if reference["layout_id"] != current["layout_id"]:
        raise ValueError(
            f"reference and current use different layouts ({reference['layout_id']} vs "
            f"{current['layout_id']}); profile both with the same reference"
        )
    if layout is None:
        carrier = reference if "layout" in reference else current
        layout = layout_of(carrier)
    names = columns if columns is not None else list(reference["columns"])
    rows = []
    for name in names:
        ref, cur = reference["columns"][name], current["columns"][name]
        kind = ref["kind"]
        chosen = _column_threshold(name, kind, threshold, num_threshold, cat_threshold, per_column_threshold)
        if ref["count"] == 0:
            raise ValueError(f"column {name!r} has no values in the reference")
        if cur["count"] == 0:
            rows.append(ColumnDrift(name, kind, "empty", "no current values", None,
                                    chosen if chosen is not None else 0.1, True, ref["count"], 0))
            continue
        if kind == "numeric":
            stattest, value = _numeric_statistic(ref, cur, np.asarray(layout["columns"][name]["edges"]))
        else:
            stattest, value = _categorical_statistic(ref, cur)
        display, default, rule = STATTESTS[stattest]
        limit = default if chosen is None else chosen
        drifted = {"ge": value >= limit, "le": value <= limit, "lt": value < limit}[rule]
        rows.append(ColumnDrift(name, kind, stattest, display, float(value), float(limit), bool(drifted),
                                int(ref["count"]), int(cur["count"])))
    return DriftResult(rows, drift_share=drift_share)


# ---------------------------------------------------------------- selection


def _column_threshold(name, kind, threshold, num_threshold, cat_threshold, per_column) -> float | None:
    if per_column and name in per_column:
        return per_column[name]
    if kind == "categorical" and cat_threshold is not None:
        return cat_threshold
    if kind == "numeric" and num_threshold is not None:
        return num_threshold
    return threshold


def _numeric_statistic(ref: dict, cur: dict, edges: np.ndarray) -> tuple[str, float]:
    counts = _numeric_counts(ref, cur)  # None: more than VALUE_CAP distinct values
    few = counts is not None and len(counts[0]) <= FEW_VALUES
    if ref["count"] > SMALL_DATA_ROWS:
        if few:
            return "jensenshannon", _jensen_shannon(*counts)
        return "wasserstein", _wasserstein(ref, cur, edges)
    if few:
        return _small_categorical(counts)
    return "ks", _ks_pvalue(ref, cur)


def _categorical_statistic(ref: dict, cur: dict) -> tuple[str, float]:
    keys, ref_counts, cur_counts, n_values = _categorical_counts(ref, cur)
    if ref["count"] > SMALL_DATA_ROWS:
        return "jensenshannon", _jensen_shannon(keys, ref_counts, cur_counts)
    if n_values > 2:
        return "chisquare", _chi_square(ref_counts, cur_counts)
    return "z", _z_test(keys, ref_counts, cur_counts)


def _small_categorical(counts) -> tuple[str, float]:
    keys, ref_counts, cur_counts = counts
    if len(keys) > 2:
        return "chisquare", _chi_square(ref_counts, cur_counts)
    return "z", _z_test(keys, ref_counts, cur_counts)


def _numeric_counts(ref: dict, cur: dict):
    if ref["values"] is None or cur["values"] is None:
        return None
    r = {v: c for v, c in ref["values"]}
    c = {v: n for v, n in cur["values"]}
    keys = sorted(set(r) | set(c))
    if len(keys) > VALUE_CAP:
        return None
    return keys, np.array([r.get(k, 0) for k in keys], float), np.array([c.get(k, 0) for k in keys], float)


def _categorical_counts(ref: dict, cur: dict):
    vocab = sorted(set(ref["freq"]) | set(cur["freq"]))
    keys: list = list(vocab)
    ref_counts = [ref["freq"].get(k, 0) for k in vocab]
    cur_counts = [cur["freq"].get(k, 0) for k in vocab]
    other_known = ref["other_keys"] is not None and cur["other_keys"] is not None
    other_keys = set(ref["other_keys"] or []) | set(cur["other_keys"] or [])
    if ref["other"] or cur["other"]:
        # One bucket for everything outside the vocabulary, named when it is one category.
        keys.append(next(iter(other_keys)) if other_known and len(other_keys) == 1 else _OTHER)
        ref_counts.append(ref["other"])
        cur_counts.append(cur["other"])
    n_values = len(vocab) + (len(other_keys) if other_known else VALUE_CAP)
    order = sorted(range(len(keys)), key=lambda i: str(keys[i]))
    keys = [keys[i] for i in order]
    return (keys, np.array([ref_counts[i] for i in order], float),
            np.array([cur_counts[i] for i in order], float), n_values)


# ---------------------------------------------------------------- statistics


def _wasserstein(ref: dict, cur: dict, edges: np.ndarray) -> float:
    """W1 = sum over bins of |integral of (F_ref - F_cur)|, normed by max(std_ref, 0.001)."""
    n_r, n_c = float(ref["count"]), float(cur["count"])
    h_r = np.asarray(ref["hist"], float) / n_r
    h_c = np.asarray(cur["hist"], float) / n_c
    d_r = bin_distance_sums(ref, edges) / n_r
    d_c = bin_distance_sums(cur, edges) / n_c
    signed = np.empty(len(h_r))
    # underflow (-inf, e0]: integral of F = mean((e0 - x)+)
    signed[0] = d_r[0] - d_c[0]
    # interior (a, b]: integral of F = (b - a) F(a) + mean((b - x) 1[a < x <= b])
    cdf_diff_at_left = np.cumsum(h_r - h_c)[:-2]
    signed[1:-1] = np.diff(edges) * cdf_diff_at_left + d_r[1:-1] - d_c[1:-1]
    # overflow (eK, inf): integral of (F_r - F_c) = mean_c((x - eK)+) - mean_r((x - eK)+)
    signed[-1] = d_c[-1] - d_r[-1]
    return float(np.abs(signed).sum() / max(float(ref["std"]), 0.001))


def _jensen_shannon(keys, ref_counts: np.ndarray, cur_counts: np.ndarray) -> float:
    """scipy.spatial.distance.jensenshannon(p, q) with the natural log."""
    p = ref_counts / ref_counts.sum()
    q = cur_counts / cur_counts.sum()
    m = (p + q) / 2.0
    with np.errstate(divide="ignore", invalid="ignore"):
        left = np.where(p > 0, p * np.log(p / m), 0.0).sum()
        right = np.where(q > 0, q * np.log(q / m), 0.0).sum()
    return float(math.sqrt(max(left + right, 0.0) / 2.0))


def _chi_square(ref_counts: np.ndarray, cur_counts: np.ndarray) -> float:
    from scipy.stats import chi2

    expected = ref_counts * (cur_counts.sum() / ref_counts.sum())
    if len(expected) < 2:
        return 1.0
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(expected > 0, (cur_counts - expected) ** 2 / expected,
                         np.where(cur_counts > 0, np.inf, 0.0))
    return float(chi2.sf(terms.sum(), len(expected) - 1))


def _z_test(keys, ref_counts: np.ndarray, cur_counts: np.ndarray) -> float:
    from scipy.stats import norm

    present_r = [k for k, c in zip(keys, ref_counts, strict=True) if c > 0]
    present_c = [k for k, c in zip(keys, cur_counts, strict=True) if c > 0]
    if len(present_r) == 1 and len(present_c) == 1 and present_r[0] == present_c[0]:
        return 1.0
    first = sorted(k for k, r, c in zip(keys, ref_counts, cur_counts, strict=True) if r + c > 0)[0]
    i = keys.index(first)
    n1, n2 = ref_counts.sum(), cur_counts.sum()
    p1 = (n1 - ref_counts[i]) / n1
    p2 = (n2 - cur_counts[i]) / n2
    pooled = (p1 * n1 + p2 * n2) / (n1 + n2)
    z = (p1 - p2) / math.sqrt(pooled * (1 - pooled) * (1.0 / n1 + 1.0 / n2))
    return float(2 * (1 - norm.cdf(abs(z))))


def _ks_pvalue(ref: dict, cur: dict) -> float:
    """Two-sided K-S p-value, p as scipy's ks_2samp(method='auto').

    D is the largest ECDF gap at the edges and just left of them. Exact when the reference keeps
    all its values as edges (<= 1000 rows or few distinct values: the layout is "exact" and
    profiles count the values on each edge); otherwise a bin whose in-bin offsets are all zero
    is taken to hold only its right edge, and any other bin's values to lie inside it."""
    from scipy.stats import distributions

    n1, n2 = int(ref["count"]), int(cur["count"])
    f_r, left_r = _cdf_at_edges(ref)
    f_c, left_c = _cdf_at_edges(cur)
    d = float(max(np.abs(f_r - f_c).max(), np.abs(left_r - left_c).max()))
    if max(n1, n2) <= 10_000:
        try:
            from scipy.stats._stats_py import _attempt_exact_2kssamp

            success, _, prob = _attempt_exact_2kssamp(n1, n2, math.gcd(n1, n2), d, "two-sided")
            if success:
                return float(np.clip(prob, 0.0, 1.0))
        except (ImportError, TypeError, ValueError):
            pass
    m, n = sorted([float(n1), float(n2)], reverse=True)
    return float(np.clip(distributions.kstwo.sf(d, np.round(m * n / (m + n))), 0.0, 1.0))


def _cdf_at_edges(column: dict) -> tuple[np.ndarray, np.ndarray]:
    """The CDF at each edge, and its left limit there (see `_ks_pvalue`)."""
    hist = np.asarray(column["hist"], float)
    cdf = np.cumsum(hist)[:-1] / hist.sum()  # F(e_j), j = 0..K
    if "at_edge" in column:  # exact layouts count the values on each edge
        return cdf, cdf - np.asarray(column["at_edge"], float) / hist.sum()
    inside = np.concatenate(([column["under"] > 0], np.asarray(column["frac_1e4"]) > 0))
    below = np.concatenate(([0.0], cdf[:-1]))  # F(e_{j-1}), with F(e_-1) = 0
    return cdf, np.where(inside, cdf, below)


def verdict_agreement(ours: DriftResult, theirs: DriftResult) -> float:
    """Share of the columns of `theirs` on which both results give the same drift verdict."""
    mine = {c.column: c.drifted for c in ours.columns}
    same = [mine[c.column] == c.drifted for c in theirs.columns]
    return sum(same) / len(same) if same else 1.0
