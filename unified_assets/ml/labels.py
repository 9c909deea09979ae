"""Late ground truth: a labels file for a batch that landed without its target column.

The file carries the dataset's id column and the target (or, for datasets without an id
column, only the target, one row per batch row in the same order). Every problem names the
file and the column; reading never raises for bad content.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from unified_assets.ml.batch_validation import read_batch
from unified_assets.ml.dataset_spec import DatasetSpec

if TYPE_CHECKING:
    import pandas as pd


@dataclass
class LabelsReport:
    """Labels aligned to the curated batch's `row_id`, or the problems that prevent it."""

    file: str
    labels: pd.DataFrame | None = None  # columns: row_id, <target> (0/1)
    problems: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.problems and self.labels is not None


def align_labels(path: Path, batch: pd.DataFrame, spec: DatasetSpec) -> LabelsReport:
    """Read `path` and match its labels to every row of the curated `batch`."""
    import pandas as pd

    report = LabelsReport(file=str(path))
    name = path.name
    try:
        frame = read_batch(path, spec.source.format)
    except Exception as error:  # noqa: BLE001 - an unreadable file is a finding
        report.problems.append(f"{name}: cannot be read as {spec.source.format} "
                               f"({type(error).__name__}: {error})")
        return report
    if spec.target not in frame.columns:
        report.problems.append(f"{name}: missing the label column {spec.target!r}")
        return report
    target = frame[spec.target]
    nulls = int(target.isna().sum())
    if nulls:
        report.problems.append(f"{name}: label {spec.target!r} missing on {nulls} row(s)")
    unexpected = sorted(set(target.dropna().unique().tolist()) - {0, 1, spec.positive_label})
    if unexpected:
        report.problems.append(f"{name}: label {spec.target!r} must be binary, "
                               f"found values {unexpected[:5]}")
    if report.problems:
        return report
    binary = (target == spec.positive_label).astype("int64")
    if spec.id_column:
        if spec.id_column not in frame.columns:
            report.problems.append(f"{name}: missing the id column {spec.id_column!r} that "
                                   "matches labels to rows")
            return report
        ids = frame[spec.id_column].astype(str)
        duplicated = int(ids.duplicated().sum())
        if duplicated:
            report.problems.append(f"{name}: {duplicated} duplicated id(s) in {spec.id_column!r}")
            return report
        by_id = pd.Series(binary.to_numpy(), index=ids.to_numpy())
        missing = int((~batch["row_id"].isin(by_id.index)).sum())
        unknown = int((~by_id.index.isin(batch["row_id"])).sum())
        if missing:
            report.problems.append(f"{name}: no label for {missing} of {len(batch)} batch row(s)")
        if unknown:
            report.problems.append(f"{name}: {unknown} label(s) for ids that are not in the batch")
        if report.problems:
            return report
        values = by_id.loc[batch["row_id"].to_numpy()].to_numpy()
    else:
        if len(frame) != len(batch):
            report.problems.append(f"{name}: {len(frame)} label row(s) for {len(batch)} batch "
                                   "row(s); without an id column labels match rows by position")
            return report
        values = binary.to_numpy()
    report.labels = pd.DataFrame({"row_id": batch["row_id"].to_numpy(), spec.target: values})
    return report
