"""Draft a dataset spec from the data itself, so a user edits a few lines instead of writing
YAML from scratch: column types, the likely binary target (alternatives listed), id candidates,
per-column null limits with headroom, segment candidates and high-cardinality columns.

The draft is plain YAML with comments; when a binary target was found it loads with
`load_spec` as written. No dagster import here; pandas is imported inside functions.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pandas as pd

FORMATS = {".csv": "csv", ".parquet": "parquet"}
SAMPLE_FILES = 5
SAMPLE_ROWS = 50_000  # per file: types and rates settle long before this
CATEGORY_LEVELS = 50  # more distinct strings than this: high cardinality
SEGMENT_LEVELS = 10
SEGMENTS = 2
DEFAULT_NULLS = 0.05  # columns without nulls in the sample may still have a few later
TARGET_HINTS = ("target", "label", "outcome", "class", "churn", "churned", "fraud", "default",
                "defaulted", "malignant", "diagnosis", "survived", "response", "converted",
                "attrition", "exited", "y")
POSITIVE_HINTS = ("yes", "y", "true", "t", "1", "positive", "pos", "churned", "fraud", "malignant",
                  "default", "bad", "fail", "failed")
ID_HINTS = ("id", "uuid", "key", "guid")
GENERIC_FOLDERS = ("batches", "data", "landing", "raw", "input")  # the spec folder names it better


class SpecInferError(ValueError):
    """The data cannot be drafted into a spec; the message names the path."""


@dataclass
class Column:
    name: str
    kind: str  # numeric | boolean | text | empty
    levels: int
    null_rate: float
    values: list = field(default_factory=list)  # the distinct values when few
    integer: bool = False
    minimum: float | None = None
    maximum: float | None = None
    worst_null_rate: float = 0.0  # the highest rate in any one sampled file
    worst_file: str = ""
    row_number: bool = False  # consecutive integers in every file: a row number, not data


@dataclass
class Draft:
    """What was inferred, and the YAML text written from it."""

    spec: dict
    text: str
    notes: list[str]


def batch_files(paths: list[Path]) -> list[Path]:
    """The csv/parquet files named or inside the named folders, in name order; one folder and
    one format, since a spec reads one folder of batches."""
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            files += sorted(p for p in path.iterdir() if p.is_file() and p.suffix in FORMATS
                            and not p.name.startswith("."))
        elif path.is_file():
            files.append(path)
        else:
            raise SpecInferError(f"{path}: no such file or folder")
    if not files:
        raise SpecInferError(f"{', '.join(map(str, paths))}: no .csv or .parquet files")
    unknown = [f for f in files if f.suffix not in FORMATS]
    if unknown:
        raise SpecInferError(f"{unknown[0]}: not a .csv or .parquet file")
    if len({f.suffix for f in files}) > 1 or len({f.parent.resolve() for f in files}) > 1:
        raise SpecInferError(f"{', '.join(map(str, paths))}: batch files must share one folder and one "
                             "format (csv or parquet); the spec reads one folder")
    return files


def _read(path: Path) -> pd.DataFrame:
    import pandas as pd

    if path.suffix == ".parquet":
        return pd.read_parquet(path).head(SAMPLE_ROWS)
    # As batches are read at ingestion: only empty cells are missing.
    return pd.read_csv(path, keep_default_na=False, na_values=[""], nrows=SAMPLE_ROWS)


def _column(name: str, series: pd.Series) -> Column:
    from pandas.api import types as ptypes

    present = series.dropna()
    distinct = present.unique()
    null_rate = float(series.isna().mean()) if len(series) else 0.0
    column = Column(name, "text", len(distinct), null_rate)
    if len(distinct) <= SEGMENT_LEVELS:
        column.values = sorted(distinct.tolist(), key=str)
    if not len(present):
        column.kind = "empty"
    elif ptypes.is_bool_dtype(series) or all(isinstance(v, bool) for v in distinct.tolist()):
        column.kind = "boolean"
    elif ptypes.is_numeric_dtype(series):
        column.kind = "numeric"
        values = present.astype("float64")
        column.integer = bool((values == values.round()).all())
        column.minimum, column.maximum = float(values.min()), float(values.max())
    return column


def _is_row_number(name: str, frames: dict[str, pd.DataFrame]) -> bool:
    """Consecutive integers in every file ('rownames' of R data sets, 'Unnamed: 0' of a
    frame written with its index): they carry no information, or leak a sort order."""
    import numpy as np

    for frame in frames.values():
        values = frame[name]
        if len(values) < 2 or values.isna().any() or not np.issubdtype(values.dtype, np.integer):
            return False
        ordered = np.sort(values.to_numpy())
        if not (np.diff(ordered) == 1).all():
            return False
    return True


def _null_rates(column: Column, frames: dict[str, pd.DataFrame]) -> None:
    """The worst file's null rate: a limit from the pooled rate would reject a sampled file."""
    for file_name, frame in frames.items():
        rate = float(frame[column.name].isna().mean()) if len(frame) else 0.0
        if rate > column.worst_null_rate:
            column.worst_null_rate, column.worst_file = rate, file_name


def _is_zero_one(column: Column) -> bool:
    return column.kind == "boolean" or (column.kind == "numeric" and set(column.values) <= {0, 1})


def _hinted(name: str, hints: tuple[str, ...]) -> bool:
    words = [w for w in re.split(r"[^a-z0-9]+", re.sub(r"([a-z])([A-Z])", r"\1_\2", name).lower()) if w]
    return any(w in hints for w in words) or name.lower() in hints


def _target_rank(column: Column, position: int, width: int) -> tuple:
    """Name hints first, then a column at the end of the table, then 0/1 coding."""
    return (_hinted(column.name, TARGET_HINTS), position == width - 1, _is_zero_one(column))


def _positive_label(column: Column, counts: pd.Series) -> object | None:
    """None for 0/1 and booleans; else a value that reads as positive, else the rarer one."""
    if _is_zero_one(column):
        return None
    for value in column.values:
        if str(value).strip().lower() in POSITIVE_HINTS:
            return value
    return counts.sort_values(kind="stable").index[0]


def _plain(value: object) -> object:
    """numpy scalars as Python ones, so the YAML holds plain values."""
    return value.item() if hasattr(value, "item") else value


def _y(value: object) -> str:
    """A YAML flow value (JSON is valid YAML; it quotes 'Yes' so it stays a string)."""
    return json.dumps(_plain(value))


def _name(folder: Path) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", folder.resolve().name).strip("-.") or "my-dataset"


def infer_spec(paths: list[Path], out: Path) -> Draft:
    """Read the files (up to SAMPLE_FILES, SAMPLE_ROWS each) and draft a spec to be written
    at `out`; the data folder must lie inside `out`'s folder, as load_spec requires."""
    import pandas as pd

    files = batch_files(paths)
    folder = files[0].parent.resolve()
    spec_dir = out.resolve().parent
    if not folder.is_relative_to(spec_dir):
        raise SpecInferError(f"{folder}: a spec reads batches inside its own folder; write the spec "
                             f"into {folder} or a folder above it (--out), not {out}")
    notes: list[str] = []
    frames = {}
    for path in files[:SAMPLE_FILES]:
        try:
            frames[path.name] = _read(path)
        except Exception as error:  # noqa: BLE001 - one unreadable batch is a note, not a stop
            notes.append(f"{path.name}: cannot be read ({type(error).__name__}: {error}); left out")
    if not frames:
        raise SpecInferError(f"{folder}: none of the sampled files could be read")
    first = next(iter(frames.values()))
    in_all = [c for c in first.columns if all(c in f.columns for f in frames.values())]
    for name in [c for f in frames.values() for c in f.columns if c not in in_all]:
        lacking = [n for n, f in frames.items() if name not in f.columns]
        notes.append(f"column {name!r} is missing from {lacking[:3]}: left out of the spec")
    frame = pd.concat([f[in_all] for f in frames.values()], ignore_index=True)
    columns = {str(c): _column(str(c), frame[c]) for c in in_all}
    for column in columns.values():
        _null_rates(column, frames)
        column.row_number = column.kind == "numeric" and _is_row_number(column.name, frames)
    names = list(columns)

    binary = [c for c in columns.values() if c.levels == 2]
    ranked = sorted(binary, key=lambda c: _target_rank(c, names.index(c.name), len(names)), reverse=True)
    target = ranked[0] if ranked else None
    if target is None:
        multi = [c for c in columns.values() if c.kind != "numeric" and 2 < c.levels <= SEGMENT_LEVELS]
        notes.append("no binary column found: set target to a column with exactly two values"
                     + (f" (e.g. map {multi[0].name!r}, which has {multi[0].levels} classes "
                        f"{multi[0].values}, to two classes)" if multi else ""))
    for column in columns.values():  # named like a target but not binary: say so
        named = _hinted(column.name, TARGET_HINTS)
        if column is not target and named and 2 < column.levels <= SEGMENT_LEVELS:
            notes.append(f"CHECK: column {column.name!r} is named like a target but has "
                         f"{column.levels} classes {column.values}; if it is the target, map it "
                         f"to two classes before landing (it is drafted as a feature here)")
    rows = len(frame)
    ids = [c for c in columns.values() if c is not target and c.null_rate == 0 and c.levels == rows
           and rows > 1 and (c.kind == "text" or (c.kind == "numeric" and c.integer))]
    ids.sort(key=lambda c: (_hinted(c.name, ID_HINTS), c.kind == "text", c.row_number), reverse=True)
    id_column = ids[0] if ids and (_hinted(ids[0].name, ID_HINTS) or ids[0].kind == "text"
                                   or ids[0].row_number) else None

    numeric, categorical, high, left_out = [], [], [], []
    for column in columns.values():
        if column is target or column is id_column:
            continue
        if column.kind == "empty":
            left_out.append((column.name, "empty in every sampled row"))
        elif column.row_number:
            left_out.append((column.name, "a row number (consecutive integers in every file)"))
        elif column.kind == "numeric":
            numeric.append(column)
        elif column.kind == "text" and column.levels == rows and rows > SEGMENT_LEVELS:
            left_out.append((column.name, "a different value on every row (an id or free text)"))
        else:
            categorical.append(column)
            if column.levels > CATEGORY_LEVELS:
                high.append(column)
    segment_candidates = [c for c in categorical + numeric
                          if 2 <= c.levels <= SEGMENT_LEVELS and (c.kind != "numeric" or c.integer)]
    segment_candidates.sort(key=lambda c: (c.kind == "numeric", c.null_rate, c.levels))
    segments = segment_candidates[:SEGMENTS]
    nullable = [c for c in numeric + categorical if c.worst_null_rate > 0]

    spec: dict = {
        "name": _name(spec_dir if folder.name.lower() in GENERIC_FOLDERS else folder),
        "source": {"path": str(folder.relative_to(spec_dir)) or ".", "format": FORMATS[files[0].suffix]},
        "target": target.name if target else None,
    }
    positive = None
    if target is not None:
        positive = _positive_label(target, frame[target.name].value_counts())
        if positive is not None:
            spec["positive_label"] = _plain(positive)
        if target.null_rate == 1.0:
            spec["labels"] = "late"
    if id_column:
        spec["id_column"] = id_column.name
    spec.update({
        "segment_columns": [c.name for c in segments],
        "numeric_features": [c.name for c in numeric],
        "categorical_features": [c.name for c in categorical],
        "max_null_fraction": DEFAULT_NULLS,
        "null_limits": {c.name: _headroom(c.worst_null_rate) for c in nullable},
    })
    text = _render(spec, files, rows, target, ranked, positive, ids, id_column, segments,
                   segment_candidates, high, left_out, nullable, numeric, notes)
    return Draft(spec, text, notes)


def _headroom(rate: float) -> float:
    """A null limit above the sampled rate: batches vary, a small rise is not a broken feed."""
    return min(1.0, math.ceil((rate * 1.5 + 0.05) * 100) / 100)


def _render(spec, files, rows, target, ranked, positive, ids, id_column, segments, segment_candidates,
            high, left_out, nullable, numeric, notes) -> str:
    lines = [f"# Draft dataset spec inferred from {len(files)} file(s) ({rows} rows sampled) by",
             "# `unified-ai spec infer`. Check the lines marked CHECK, then load it with",
             "# UNIFIED_AI_DATASET_SPEC or `unified-ai demo --spec`. Fields: README, Bring your own data.",
             *[f"# NOTE: {n}" for n in notes],
             f"name: {_y(spec['name'])}",
             f"source: {json.dumps(spec['source'])}",
             ""]
    if target is None:
        lines.append("target: null  # REQUIRED: no binary column found (see NOTE above)")
    else:
        others = [f"{c.name} {c.values}" for c in ranked[1:6]]
        lines.append(f"target: {_y(target.name)}  # CHECK: binary, values {target.values}"
                     + (f"; other binary columns: {', '.join(others)}" if others else ""))
        if positive is not None:
            lines.append(f"positive_label: {_y(positive)}  # CHECK: the positive class, one of "
                         f"{target.values}")
        if "labels" in spec:
            lines.append('labels: "late"  # the target is empty in the sample: label files follow')
        else:
            lines.append('labels: "inline"  # or late: batches land without the target, label files follow')
    if id_column:
        alternatives = [c.name for c in ids if c is not id_column]
        lines.append(f"id_column: {_y(id_column.name)}  # unique and non-null in the sample"
                     + (f"; also unique: {alternatives[:5]}" if alternatives else ""))
    else:
        lines.append("# id_column: none found unique and non-null"
                     + (f" (unique integer columns: {[c.name for c in ids][:5]})" if ids else "")
                     + "; rows get ids by position")
    candidates = [f"{c.name} ({c.levels} levels)" for c in segment_candidates[:8]]
    lines.append(f"segment_columns: {json.dumps(spec['segment_columns'])}  # CHECK: groups compared "
                 f"for fairness; candidates: {', '.join(candidates) or 'none'}")
    lines.append("numeric_features:" + (" []" if not numeric else ""))
    lines += [f"  - {_y(c.name)}" for c in numeric]
    lines.append("categorical_features:" + (" []" if not spec["categorical_features"] else ""))
    highs = {c.name: c.levels for c in high}
    for name in spec["categorical_features"]:
        comment = f"  # high cardinality: {highs[name]} levels" if name in highs else ""
        lines.append(f"  - {_y(name)}{comment}")
    for name, why in left_out:
        lines.append(f"# left out: {name}: {why}")
    lines.append("# Ranges are left open; bound numeric features to catch broken feeds by replacing")
    lines.append("# the line below with e.g. (sampled min, max):")
    example = ", ".join(f"{_y(c.name)}: [{c.minimum:g}, {c.maximum:g}]" for c in numeric[:3])
    if example:
        lines.append(f"#   ranges: {{{example}}}")
    lines.append("ranges: {}")
    lines.append(f"max_null_fraction: {DEFAULT_NULLS}  # columns not under null_limits (none sampled)")
    lines.append("null_limits:" + (" {}" if not nullable else "  # sampled null rate plus headroom"))
    for column in nullable:
        worst = (f", {column.worst_null_rate:.1%} null in {column.worst_file}"
                 if len(files) > 1 and column.worst_null_rate > column.null_rate else "")
        lines.append(f"  {_y(column.name)}: {spec['null_limits'][column.name]}  "
                     f"# {column.null_rate:.1%} null in the sample{worst}")
    return "\n".join(lines) + "\n"
