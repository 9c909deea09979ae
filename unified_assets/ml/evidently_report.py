"""Evidently report for humans: classification quality on the holdout and data drift of the
holdout against the training rows. Evidently is imported here only (it takes seconds)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

PREDICTION = "__prediction__"
REFERENCE_ROWS = 20_000


def evidently_html(
    train: pd.DataFrame,
    train_scores: np.ndarray,
    holdout: pd.DataFrame,
    holdout_scores: np.ndarray,
    numeric: list[str],
    categorical: list[str],
    target: str,
) -> str:
    """A self-contained HTML report (no network needed to view it)."""
    import warnings

    from evidently import BinaryClassification, DataDefinition, Dataset, Report
    from evidently.presets import ClassificationPreset, DataDriftPreset

    columns = numeric + categorical + [target]
    reference = train[columns].assign(**{PREDICTION: train_scores})
    if len(reference) > REFERENCE_ROWS:
        reference = reference.sample(REFERENCE_ROWS, random_state=7)
    current = holdout[columns].assign(**{PREDICTION: holdout_scores})
    definition = DataDefinition(
        numerical_columns=numeric + [PREDICTION],
        categorical_columns=categorical + [target],
        classification=[BinaryClassification(target=target, prediction_probas=PREDICTION)],
    )
    report = Report([DataDriftPreset(columns=numeric + categorical), ClassificationPreset()])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        snapshot = report.run(
            current_data=Dataset.from_pandas(current, data_definition=definition),
            reference_data=Dataset.from_pandas(reference, data_definition=definition),
        )
        return snapshot.get_html_str(as_iframe=False)
