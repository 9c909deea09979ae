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
    not_evaluated: dict[str, str] = field(default_factory=dict)  # check -> why it could not run
    findings: dict[str, list[str]] = field(default_factory=lambda: {c: [] for c in CHECK_NAMES})

    @property
    def rows(self) -> int:
        return 0 if self.frame is None else len(self.frame)

    @property
    def passed(self) -> bool:
        """Every check ran and found nothing: a check that could not run never passes a batch."""
        return not self.not_evaluated and not any(self.findings.values())

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


def read_columns(path: Path, file_format: str) -> list[str]:
    """Column names only (parquet schema, csv header): cheap enough to run at load."""
    if file_format == "parquet":
        import pyarrow.parquet as pq

        return [str(c) for c in pq.read_schema(path).names]
    import pandas as pd

    return [str(c) for c in pd.read_csv(path, nrows=0).columns]


def first_batch_problems(spec: DatasetSpec) -> list[str]:
    """The spec's named columns checked against the first landed batch file (by name), so a
    misspelled column is an error at load instead of every batch failing (or, for the
    target, every batch silently waiting for labels). Nothing landed or unreadable: []
    (the batch's own schema check reports an unreadable file)."""
    folder = Path(spec.source.path)
    files = sorted(p for p in folder.glob(spec.source.glob) if p.is_file() and not p.name.startswith(".")
                   and not p.name.endswith(".partial")) \
        if folder.is_dir() else []
    if not files:
        return []
    try:
        columns = read_columns(files[0], spec.source.format)
    except Exception:  # noqa: BLE001 - the schema check reports it per batch
        return []
    problems = missing_named_columns(spec, columns, str(files[0]))
    if spec.id_column and spec.id_column not in columns:
        problems.append(f"{files[0]}: missing column {spec.id_column!r} (spec field id_column)"
                        f"{close_matches(spec.id_column, columns)}")
    return problems


def _skip_rest(report: BatchReport, why: str) -> None:
    """Checks that cannot run are recorded as not evaluated, with why, and no finding: they
    did not fail, they did not run (the UI shows them skipped). The batch still fails closed:
    `passed` is false while any check was not evaluated, and the schema finding says why."""
    for name in CHECK_NAMES[1:]:
        report.not_evaluated[name] = why


def close_matches(column: str, available: list[str]) -> str:
    """' (did you mean 'Outcome'?)' for a misspelled column, '' when nothing is close."""
    import difflib

    by_case = [c for c in available if str(c).lower() == column.lower()]
    matches = by_case or difflib.get_close_matches(column, [str(c) for c in available], n=3, cutoff=0.6)
    if not matches:
        return ""
    return " (did you mean " + " or ".join(repr(m) for m in matches) + "?)"


def missing_named_columns(spec: DatasetSpec, columns: list[str], name: str) -> list[str]:
    """Every column the spec names but the file lacks, naming the spec field and close
    matches. The target is required unless the spec says labels may land later; the id and
    time columns are checked elsewhere (ids) or optional."""
    problems = []
    for column, field_name in spec.named_columns.items():
        if column in columns or field_name in ("id_column", "time_column"):
            continue
        if column == spec.target:
            if spec.labels != "inline":
                continue
            problems.append(
                f"{name}: target column {column!r} (spec field target) is missing"
                f"{close_matches(column, columns)}; if labels land later in label files, set "
                "labels: late in the spec")
            continue
        problems.append(f"{name}: missing column {column!r} (spec field {field_name})"
                        f"{close_matches(column, columns)}")
    return problems


def validate_frame(frame: pd.DataFrame, spec: DatasetSpec, report: BatchReport) -> None:
    name = Path(report.file).name
    schema = report.findings["schema"]
    if frame.empty:
        schema.append(f"{name}: the batch has no rows")
    columns = [str(c) for c in frame.columns]
    schema.extend(missing_named_columns(spec, columns, name))
    for column in spec.numeric_features:
        if column in frame.columns and not _is_numeric(frame[column]):
            schema.append(
                f"{name}: column {column!r} must be numeric, found {frame[column].dtype} (e.g. "
                f"{_non_numeric_examples(frame[column])}); spec field numeric_features lists it, "
                "list it under categorical_features if it is a category"
            )
    if schema:
        _skip_rest(report, f"the schema check failed on {name}")
        return

    if spec.id_column:
        report.findings["ids"].extend(id_problems(frame, spec.id_column, name))

    nulls = report.findings["nulls"]
    for column in dict.fromkeys(spec.feature_columns + spec.segment_columns):
        fraction = float(frame[column].isna().mean())
        limit, field_name = spec.null_limit(column)
        if fraction > limit:
            nulls.append(
                f"{name}: column {column!r} is {fraction:.1%} null, above the {limit:.1%} allowed "
                f"by spec field {field_name}; raise null_limits.{column} if nulls are expected there"
            )

    ranges = report.findings["ranges"]
    # Any infinity breaks training downstream (scaling turns it into NaN), bounds or not.
    for column in spec.numeric_features:
        ranges.extend(_non_finite(frame[column], column, name))
    for column, (low, high) in spec.ranges.items():
        values = frame[column].dropna().astype("float64")
        values = values[~values.isin([float("inf"), float("-inf")])]  # reported above
        below = int((values < low).sum()) if low is not None else 0
        above = int((values > high).sum()) if high is not None else 0
        if below or above:
            ranges.append(
                f"{name}: column {column!r} has {below} value(s) below {_bound(low)} and "
                f"{above} above {_bound(high)} (min {values.min()}, max {values.max()}; spec "
                f"field ranges.{column})"
            )

    labels = report.findings["label"]
    if spec.target not in frame.columns or frame[spec.target].isna().all():
        if spec.labels == "inline":
            labels.append(f"{name}: label {spec.target!r} is empty on every row; the spec says "
                          "labels come inline (set labels: late if label files follow)")
            return
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


def _non_numeric_examples(series: pd.Series) -> list:
    import pandas as pd

    text = series.dropna()
    bad = text[pd.to_numeric(text, errors="coerce").isna()]
    return list(dict.fromkeys(bad.astype(str)))[:EXAMPLES]


def _same_label(value: object, positive: object) -> bool:
    """A label equals `positive`: 1 == 1.0 == True; text compared without case or spaces, so
    positive_label 'yes' matches 'Yes' and '1' matches 1."""
    if isinstance(value, str) or isinstance(positive, str):
        return str(value).strip().lower() == str(positive).strip().lower()
    return bool(value == positive)


def is_positive(value: object, spec: DatasetSpec) -> bool:
    """Without positive_label only 0/1 or boolean labels are accepted and 1/True is positive."""
    if spec.positive_label is None:
        return _same_label(value, 1) and not isinstance(value, str)
    return _same_label(value, spec.positive_label)


def label_problems(target: pd.Series, spec: DatasetSpec, name: str) -> list[str]:
    """A binary target has at most two values, one of them the positive class: a third class
    would silently be folded into the negatives, and 'No'/'Yes' needs positive_label."""
    found = _sorted_values(target.dropna().unique().tolist())
    field_hint = "set the spec field positive_label to the value of the positive class"
    if len(found) > 2:
        return [f"{name}: label {spec.target!r} must be binary, found {len(found)} classes "
                f"{found[:EXAMPLES + 1]}; map it to two classes before landing"]
    if spec.positive_label is None:
        coded = all(not isinstance(v, str) and (_same_label(v, 0) or _same_label(v, 1)) for v in found)
        if not coded and len(found) == 2:
            return [f"{name}: label {spec.target!r} has the two values {found}, not 0/1 or "
                    f"booleans, and the spec does not say which is positive: {field_hint} (e.g. "
                    f"positive_label: {found[-1]!r})"]
        if not coded:
            return [f"{name}: label {spec.target!r} must be binary, found values {found}, not 0/1 "
                    f"or booleans: {field_hint}"]
        return []
    if len(found) == 2 and not any(is_positive(v, spec) for v in found):
        return [f"{name}: label {spec.target!r} must be binary (the positive label "
                f"{spec.positive_label!r} and one other value), found {found}: the spec field "
                f"positive_label matches none of them; {field_hint}"]
    return []


def binary_labels(target: pd.Series, spec: DatasetSpec) -> pd.Series:
    """The target as 0/1 int64 (1 = the positive class), whatever type the labels had."""
    positive = {v: int(is_positive(v, spec)) for v in target.dropna().unique().tolist()}
    return target.map(positive).astype("int64")


def id_problems(frame: pd.DataFrame, column: str, name: str) -> list[str]:
    """Ids decide each row's holdout side and match late labels: every row needs its own.
    Compared as the text stored in `row_id`."""
    if column not in frame.columns:
        return [f"{name}: id column {column!r} is missing (spec field id_column)"
                f"{close_matches(column, [str(c) for c in frame.columns])}; rows cannot be matched "
                "to late labels or kept on one side of the holdout"]
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

    Numeric features are float64 (nulls NaN), even when also a segment; categories and
    segments are text with nulls kept as nulls (never the string 'nan') and integer codes as
    '0'/'1', never '0.0'. The target is 0/1 int64. An unlabelled batch has no target column
    until its labels land."""
    import numpy as np

    from unified_assets.ml.profiles import category_text

    labelled = spec.target in frame.columns and not frame[spec.target].isna().all()
    columns = [c for c in dict.fromkeys(spec.required_columns) if c != spec.target]
    out = frame[columns].copy()
    for column in spec.numeric_features:
        out[column] = frame[column].to_numpy(dtype="float64", na_value=np.nan)
    for column in dict.fromkeys(spec.categorical_features + spec.segment_columns):
        if column not in spec.numeric_features:
            out[column] = category_text(frame[column])
    if labelled:
        out[spec.target] = binary_labels(frame[spec.target], spec).to_numpy()
    if spec.id_column and spec.id_column in frame.columns:
        out["row_id"] = frame[spec.id_column].astype(str)
    else:
        out["row_id"] = [f"{batch_id}:{i}" for i in range(len(frame))]
    out["batch_id"] = batch_id
    return out.reset_index(drop=True)

