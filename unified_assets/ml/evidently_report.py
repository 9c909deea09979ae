"""Evidently reports for humans: classification quality on the holdout, and data drift of a
batch against the champion's training rows. Evidently is imported here only (it takes seconds)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from unified_assets.ml.drift import DEFAULT_DRIFT_SHARE, STATTESTS, ColumnDrift, DriftResult

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

PREDICTION = "__prediction__"
REFERENCE_ROWS = 20_000
SAMPLE_ROWS = 20_000  # per side of a drift report: a few seconds, and ample rows for the statistics
SAMPLE_SEED = 7


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


# ---------------------------------------------------------------- data drift


def evidently_drift(
    reference: pd.DataFrame,
    current: pd.DataFrame,
    numeric: list[str],
    categorical: list[str],
    num_threshold: float | None = None,
    cat_threshold: float | None = None,
    drift_share: float = DEFAULT_DRIFT_SHARE,
    sample_rows: int = SAMPLE_ROWS,
) -> tuple[str, dict]:
    """DataDriftPreset's self-contained HTML and its verdicts, on frames sampled to `sample_rows`.

    Methods are Evidently's defaults (the ones `unified_assets.ml.drift` reproduces on profiles:
    Wasserstein normed / Jensen-Shannon above 1000 reference rows), thresholds the policy's, so the
    verdicts are comparable with the profile decision. Sampling keeps the run to seconds; the
    summary says how many rows each side had and how many were compared."""
    columns = list(numeric) + list(categorical)
    ref, cur = _sample(reference[columns], sample_rows), _sample(current[columns], sample_rows)
    snapshot = _run_drift(ref, cur, numeric, categorical, num_threshold, cat_threshold, drift_share)
    result = drift_result(snapshot.dict(), ref, cur, numeric, categorical, drift_share)
    summary = result.to_dict() | {
        "drifted_columns": result.drifted_columns,
        "rows": {"reference": len(reference), "current": len(current),
                 "reference_compared": len(ref), "current_compared": len(cur),
                 "sampled": len(ref) < len(reference) or len(cur) < len(current),
                 "sample_cap": sample_rows},
    }
    return snapshot.get_html_str(as_iframe=False), summary


def evidently_verdicts(
    reference: pd.DataFrame,
    current: pd.DataFrame,
    numeric: list[str],
    categorical: list[str],
    num_threshold: float | None = None,
    cat_threshold: float | None = None,
    drift_share: float = DEFAULT_DRIFT_SHARE,
) -> DriftResult:
    """Evidently's verdicts on all rows, no HTML: the yardstick for our profile drift (tests, bench)."""
    columns = list(numeric) + list(categorical)
    snapshot = _run_drift(reference[columns], current[columns], numeric, categorical,
                          num_threshold, cat_threshold, drift_share)
    return drift_result(snapshot.dict(), reference, current, numeric, categorical, drift_share)


def drift_result(
    data: dict,
    reference: pd.DataFrame,
    current: pd.DataFrame,
    numeric: list[str],
    categorical: list[str],
    drift_share: float,
) -> DriftResult:
    """A DataDriftPreset snapshot's `dict()` in `unified_assets.ml.drift`'s result shape.

    Values, methods and thresholds come from each ValueDrift metric, the per-column verdict
    from its test status (FAIL = drift detected, needs `include_tests=True`), the share from
    DriftedColumnsCount, checked against the column verdicts."""
    status = {
        t["metric_config"]["params"]["column"]: t["status"]
        for t in data["tests"]
        if t["metric_config"]["params"].get("type", "").endswith("ValueDrift")
    }
    by_display = {display: name for name, (display, _, _) in STATTESTS.items()}
    rows = {}
    share = None
    for metric in data["metrics"]:
        config = metric["config"]
        if config["type"].endswith("DriftedColumnsCount"):
            share = metric["value"]["share"]
        elif config["type"].endswith("ValueDrift"):
            column = config["column"]
            rows[column] = ColumnDrift(
                column=column,
                kind="numeric" if column in numeric else "categorical",
                stattest=by_display.get(config["method"], config["method"]),
                statistic=config["method"],
                value=float(metric["value"]),
                threshold=float(config["threshold"]),
                drifted=status[column] == "FAIL",
                reference_count=int(reference[column].notna().sum()),
                current_count=int(current[column].notna().sum()),
            )
    result = DriftResult([rows[c] for c in list(numeric) + list(categorical)], drift_share=drift_share)
    if share is not None and abs(share - result.share_of_drifted_columns) > 1e-12:
        raise RuntimeError(f"Evidently's drifted share {share} disagrees with its column verdicts")
    return result


def _sample(frame: pd.DataFrame, rows: int) -> pd.DataFrame:
    return frame.sample(rows, random_state=SAMPLE_SEED) if len(frame) > rows else frame


def _run_drift(reference, current, numeric, categorical, num_threshold, cat_threshold, drift_share):
    import warnings

    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset

    definition = DataDefinition(numerical_columns=list(numeric), categorical_columns=list(categorical))
    preset = DataDriftPreset(columns=list(numeric) + list(categorical), drift_share=drift_share,
                             num_threshold=num_threshold, cat_threshold=cat_threshold)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return Report([preset], include_tests=True).run(
            current_data=Dataset.from_pandas(current, data_definition=definition),
            reference_data=Dataset.from_pandas(reference, data_definition=definition),
        )
