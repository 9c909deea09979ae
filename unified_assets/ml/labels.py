"""Late ground truth: a labels file for a batch that landed without its target column.

The file carries the dataset's id column and the target (or, for datasets without an id
column, only the target, one row per batch row in the same order). Every problem names the
file and the column; reading never raises for bad content.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from unified_assets.ml.batch_validation import (
    binary_labels,
    close_matches,
    id_problems,
    label_problems,
    read_batch,
)
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
        report.problems.append(f"{name}: missing the label column {spec.target!r} (spec field "
                               f"target){close_matches(spec.target, [str(c) for c in frame.columns])}")
        return report
    target = frame[spec.target]
    nulls = int(target.isna().sum())
    if nulls:
        report.problems.append(f"{name}: label {spec.target!r} missing on {nulls} row(s)")
    report.problems.extend(label_problems(target, spec, name))
    if report.problems:
        return report
    if batch["row_id"].isna().any() or batch["row_id"].duplicated().any():
        # A curated batch has unique ids (its `ids` check); anything else would let one label
        # row label many batch rows.
        report.problems.append(f"{name}: the batch's row ids are not unique; labels cannot be "
                               "matched to its rows")
        return report
    binary = binary_labels(target, spec)
    if spec.id_column:
        if spec.id_column not in frame.columns:
            report.problems.append(f"{name}: missing the id column {spec.id_column!r} that "
                                   "matches labels to rows")
            return report
        report.problems.extend(id_problems(frame, spec.id_column, name))
        if report.problems:
            return report
        ids = frame[spec.id_column].astype(str)
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
