"""Read one landed batch file and judge it against the dataset spec.

Every problem is reported with the file and the column so the failing data-quality
check in the UI says exactly what to fix. Reading never raises for bad content: an
unreadable file is itself a finding.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from unified_assets.ml.dataset_spec import DatasetSpec

if TYPE_CHECKING:
    import pandas as pd

CHECK_NAMES = ("schema", "ids", "nulls", "ranges", "label")
EXAMPLES = 5  # values quoted in a finding, enough to find the rows


@dataclass
class BatchReport:
    """Findings per check for one batch file; `frame` is None when unreadable."""

    file: str
    frame: pd.DataFrame | None
    labelled: bool = True
    findings: dict[str, list[str]] = field(default_factory=lambda: {c: [] for c in CHECK_NAMES})

    @property
    def rows(self) -> int:
        return 0 if self.frame is None else len(self.frame)

    @property
    def passed(self) -> bool:
        return not any(self.findings.values())

    def failed_checks(self) -> list[str]:
        return [name for name, problems in self.findings.items() if problems]


def read_batch(path: Path, file_format: str) -> pd.DataFrame:
    import pandas as pd

    if file_format == "parquet":
        return pd.read_parquet(path)
    # Only empty cells are missing: pandas' default would read region "NA" as null.
    return pd.read_csv(path, keep_default_na=False, na_values=[""])


def validate_batch_file(path: Path, spec: DatasetSpec) -> BatchReport:
    """Read `path` and run every data-quality rule of `spec` on it."""
    report = BatchReport(file=str(path), frame=None)
    try:
        frame = read_batch(path, spec.source.format)
    except Exception as error:  # noqa: BLE001 - any read failure is a finding, not a crash
        kind = type(error).__name__
        report.findings["schema"].append(
            f"{path.name}: cannot be read as {spec.source.format} ({kind}: {error})"
        )
        _skip_rest(report, "file unreadable")
        return report
    report.frame = frame
    validate_frame(frame, spec, report)
    return report


def _skip_rest(report: BatchReport, why: str) -> None:
    for name in CHECK_NAMES[1:]:
        report.findings[name].append(f"{Path(report.file).name}: not checked, {why}")


def validate_frame(frame: pd.DataFrame, spec: DatasetSpec, report: BatchReport) -> None:
    name = Path(report.file).name
    schema = report.findings["schema"]
    if frame.empty:
        schema.append(f"{name}: the batch has no rows")
    # The label may come later (late labels): a batch without the target column is scored
    # traffic awaiting ground truth, not a schema error.
    missing = [c for c in spec.required_columns if c not in frame.columns and c != spec.target]
    if missing:
        schema.append(f"{name}: missing columns {missing}")
    for column in spec.numeric_features:
        if column in frame.columns and not _is_numeric(frame[column]):
            schema.append(
                f"{name}: column {column!r} must be numeric, found {frame[column].dtype}"
            )
    if schema:
        _skip_rest(report, "schema is wrong")
        return

    if spec.id_column:
        report.findings["ids"].extend(id_problems(frame, spec.id_column, name))

    nulls = report.findings["nulls"]
    for column in spec.feature_columns + spec.segment_columns:
        fraction = float(frame[column].isna().mean())
        if fraction > spec.max_null_fraction:
            nulls.append(
                f"{name}: column {column!r} is {fraction:.1%} null "
                f"(allowed {spec.max_null_fraction:.1%})"
            )

    ranges = report.findings["ranges"]
    # Any infinity breaks training downstream (scaling turns it into NaN), bounds or not.
    for column in spec.numeric_features:
        ranges.extend(_non_finite(frame[column], column, name))
    for column, (low, high) in spec.ranges.items():
        values = frame[column].dropna()
        values = values[~values.isin([float("inf"), float("-inf")])]  # reported above
        below = int((values < low).sum()) if low is not None else 0
        above = int((values > high).sum()) if high is not None else 0
        if below or above:
            ranges.append(
                f"{name}: column {column!r} has {below} value(s) below {_bound(low)} and "
                f"{above} above {_bound(high)} (min {values.min()}, max {values.max()})"
            )

    labels = report.findings["label"]
    if spec.target not in frame.columns or frame[spec.target].isna().all():
        report.labelled = False  # labels land later, for the whole batch
        return
    target = frame[spec.target]
    missing_labels = int(target.isna().sum())
    if missing_labels:
        labels.append(
            f"{name}: label {spec.target!r} missing on {missing_labels} of {len(frame)} row(s); "
            "a batch is labelled on every row or on none (labels may land later)"
        )
    labels.extend(label_problems(target, spec, name))


def label_problems(target: pd.Series, spec: DatasetSpec, name: str) -> list[str]:
    """A binary target holds the positive label and at most one other value (0/1 coded):
    a third class would silently be folded into the negatives."""
    found = _sorted_values(target.dropna().unique().tolist())
    problems = []
    if len([v for v in found if v != spec.positive_label]) > 1:
        problems.append(f"{name}: label {spec.target!r} must be binary (the positive label "
                        f"{spec.positive_label} and one other value), found {found[:EXAMPLES + 1]}")
    unexpected = [v for v in found if v not in {0, 1, spec.positive_label}]
    if unexpected and not problems:
        problems.append(f"{name}: label {spec.target!r} must be binary, found values "
                        f"{unexpected[:EXAMPLES]}")
    return problems


def id_problems(frame: pd.DataFrame, column: str, name: str) -> list[str]:
    """Ids decide each row's holdout side and match late labels: every row needs its own.
    Compared as the text stored in `row_id`."""
    if column not in frame.columns:
        return [f"{name}: id column {column!r} is missing; rows cannot be matched to late labels "
                "or kept on one side of the holdout"]
    problems = []
    ids = frame[column]
    blank = ids.isna() | (ids.astype(str).str.strip() == "")
    if blank.any():
        rows = [int(i) for i in blank.to_numpy().nonzero()[0][:EXAMPLES]]
        problems.append(f"{name}: id column {column!r} is null or blank on {int(blank.sum())} "
                        f"row(s), e.g. rows {rows}")
    text = ids[~blank].astype(str)
    duplicated = text[text.duplicated()]
    if len(duplicated):
        problems.append(f"{name}: id column {column!r} has {len(duplicated)} duplicated value(s), "
                        f"e.g. {list(dict.fromkeys(duplicated))[:EXAMPLES]}")
    return problems


def _non_finite(series: pd.Series, column: str, name: str) -> list[str]:
    import numpy as np

    values = series.dropna().to_numpy(dtype="float64", na_value=np.nan)
    positive, negative = int(np.isposinf(values).sum()), int(np.isneginf(values).sum())
    if not positive and not negative:
        return []
    return [f"{name}: column {column!r} has {positive + negative} non-finite value(s) "
            f"({positive} +inf, {negative} -inf); numeric features must be finite"]


def _sorted_values(values: list) -> list:
    try:
        return sorted(values)
    except TypeError:  # mixed types: keep the order found
        return values


def _bound(value: float | None) -> str:
    return "-" if value is None else f"{value:g}"


def _is_numeric(series: pd.Series) -> bool:
    from pandas.api import types as ptypes

    return bool(ptypes.is_numeric_dtype(series))


def curated(frame: pd.DataFrame, spec: DatasetSpec, batch_id: str) -> pd.DataFrame:
    """The columns downstream needs, typed consistently, with a stable row id and batch id.
    An unlabelled batch has no target column until its labels land."""
    labelled = spec.target in frame.columns and not frame[spec.target].isna().all()
    columns = [c for c in dict.fromkeys(spec.required_columns) if c != spec.target]
    out = frame[columns].copy()
    for column in spec.numeric_features:
        out[column] = out[column].astype("float64")
    for column in dict.fromkeys(spec.categorical_features + spec.segment_columns):
        out[column] = out[column].astype(str)
    if labelled:
        out[spec.target] = (frame[spec.target] == spec.positive_label).astype("int64")
    if spec.id_column and spec.id_column in frame.columns:
        out["row_id"] = frame[spec.id_column].astype(str)
    else:
        out["row_id"] = [f"{batch_id}:{i}" for i in range(len(frame))]
    out["batch_id"] = batch_id
    return out.reset_index(drop=True)
