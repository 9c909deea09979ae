"""Classification metrics, overall and per segment. Undefined values are None, never 0."""

from __future__ import annotations

import numpy as np
import pandas as pd


def binary_metrics(y_true: np.ndarray, scores: np.ndarray, threshold: float = 0.5) -> dict:
    """Ranking and thresholded metrics; ROC/PR AUC are None when only one class is present."""
    from sklearn import metrics as skm

    y_true = np.asarray(y_true).astype(int)
    scores = np.asarray(scores, dtype=float)
    if len(y_true) == 0:
        raise ValueError("cannot compute metrics on zero rows")
    predicted = (scores >= threshold).astype(int)
    both_classes = len(np.unique(y_true)) == 2
    return {
        "rows": int(len(y_true)),
        "positives": int(y_true.sum()),
        "roc_auc": float(skm.roc_auc_score(y_true, scores)) if both_classes else None,
        "pr_auc": float(skm.average_precision_score(y_true, scores)) if both_classes else None,
        "f1": float(skm.f1_score(y_true, predicted, zero_division=0)),
        "recall": float(skm.recall_score(y_true, predicted, zero_division=0)),
        "precision": float(skm.precision_score(y_true, predicted, zero_division=0)),
        "brier": float(skm.brier_score_loss(y_true, scores)),
    }


def segment_metrics(
    frame: pd.DataFrame,
    y_true: np.ndarray,
    scores: np.ndarray,
    segment_columns: list[str],
    threshold: float = 0.5,
) -> list[dict]:
    """One row per (segment column, value) with the same metrics as `binary_metrics`."""
    rows = []
    y_true = np.asarray(y_true)
    scores = np.asarray(scores)
    for column in segment_columns:
        values = frame[column].astype(str).to_numpy()
        for value in sorted(set(values)):
            mask = values == value
            rows.append(
                {"segment": column, "value": value, **binary_metrics(y_true[mask], scores[mask], threshold)}
            )
    return rows


def best_threshold_f1(y_true: np.ndarray, scores: np.ndarray) -> float:
    """The score threshold maximising F1 on the given rows (used on training data only)."""
    from sklearn.metrics import precision_recall_curve

    precision, recall, thresholds = precision_recall_curve(y_true, scores)
    f1 = 2 * precision * recall / np.maximum(precision + recall, 1e-12)
    return float(thresholds[int(np.argmax(f1[:-1]))]) if len(thresholds) else 0.5
