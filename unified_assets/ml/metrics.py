"""Classification metrics, overall and per segment. Undefined values are None, never 0."""

from __future__ import annotations

import numpy as np
import pandas as pd

from unified_assets.ml.profiles import category_text


def binary_metrics(y_true: np.ndarray, scores: np.ndarray, threshold: float = 0.5) -> dict:
    """Ranking and thresholded metrics; ROC/PR AUC are None when only one class is present."""
    from sklearn import metrics as skm

    y_true = np.asarray(y_true).astype(int)
    scores = np.asarray(scores, dtype=float)
    if len(y_true) == 0:
        raise ValueError("cannot compute metrics on zero rows")
    predicted = (scores >= threshold).astype(int)
    both_classes = len(np.unique(y_true)) == 2
    base_rate = float(y_true.mean())
    pr_auc = float(skm.average_precision_score(y_true, scores)) if both_classes else None
    brier = float(skm.brier_score_loss(y_true, scores))
    return {
        "rows": int(len(y_true)),
        "positives": int(y_true.sum()),
        "roc_auc": float(skm.roc_auc_score(y_true, scores)) if both_classes else None,
        "pr_auc": pr_auc,
        # A model ranking at random has PR AUC = the positive rate: the lift is comparable
        # across data sets (1.0 is chance) where an absolute floor is not.
        "pr_auc_lift": pr_auc / base_rate if both_classes else None,
        "f1": float(skm.f1_score(y_true, predicted, zero_division=0)),
        "recall": float(skm.recall_score(y_true, predicted, zero_division=0)),
        "precision": float(skm.precision_score(y_true, predicted, zero_division=0)),
        "brier": brier,
        "brier_skill": brier_skill(brier, base_rate) if both_classes else None,
    }


def brier_skill(brier: float, base_rate: float) -> float:
    """Brier skill score against the constant base-rate forecast: 1 - brier / (p(1-p)).

    The constant forecast at the positive rate p scores Brier p(1-p) (0.196 at 27%
    positives, 0.0099 at 1%), so an absolute Brier ceiling fails good models on balanced
    data and passes useless ones on rare positives; the skill is 0 for that forecast,
    1 for a perfect one, whatever p is. Undefined (ValueError) with one class."""
    reference = base_rate * (1.0 - base_rate)
    if reference <= 0.0:
        raise ValueError("the Brier skill score needs both classes")
    return 1.0 - brier / reference


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
        # As profiles and drift name them: '1' whether loaded as int or float, never 'nan'.
        values = category_text(frame[column]).fillna("(missing)").to_numpy()
        for value in sorted(set(values)):
            mask = values == value
            rows.append(
                {"segment": column, "value": value, **binary_metrics(y_true[mask], scores[mask], threshold)}
            )
    return rows


def single_feature_aucs(train: pd.DataFrame, holdout: pd.DataFrame, target: str,
                        numeric: list[str], categorical: list[str]) -> dict[str, float]:
    """How well each feature alone separates the target on the holdout: max(auc, 1 - auc).

    A value near 1 means the column (almost) encodes the label. Numeric features rank by
    their value (rows where it is missing are left out); categorical ones by their level's
    positive rate on the training rows (unseen levels get the overall rate), so an id-like
    column with one row per level is not mistaken for a perfect separator. Features with one
    class left on the holdout are skipped."""
    from sklearn.metrics import roc_auc_score

    y = holdout[target].to_numpy().astype(int)
    out: dict[str, float] = {}
    for column in numeric:
        values = pd.to_numeric(holdout[column], errors="coerce").to_numpy(dtype=float)
        keep = np.isfinite(values)
        if len(np.unique(y[keep])) == 2:
            auc = float(roc_auc_score(y[keep], values[keep]))
            out[column] = max(auc, 1.0 - auc)
    y_train = train[target].astype(int)
    overall = float(y_train.mean()) if len(y_train) else 0.0
    for column in categorical:
        rates = y_train.groupby(train[column].astype(str)).mean()
        score = holdout[column].astype(str).map(rates).fillna(overall).to_numpy(dtype=float)
        if len(np.unique(y)) == 2:
            auc = float(roc_auc_score(y, score))
            out[column] = max(auc, 1.0 - auc)
    return out
