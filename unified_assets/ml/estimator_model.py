"""Any estimator with `predict_proba` as an MLflow pyfunc that scores raw frames.

A user's candidate may return a plain scikit-learn (or compatible) estimator; evaluation and
serving load every registered version the same way (`mlflow.pyfunc`, frame in, positive-class
scores out), so the estimator is wrapped with the feature columns it was fitted on.
"""

from __future__ import annotations

from typing import Any

import mlflow.pyfunc
import numpy as np
import pandas as pd


class EstimatorModel(mlflow.pyfunc.PythonModel):
    """Selects the fitted feature columns of a raw frame and returns P(positive)."""

    def __init__(self, estimator: Any, features: list[str]) -> None:
        self.estimator, self.features = estimator, list(features)

    def predict(self, context, model_input: pd.DataFrame, params=None) -> np.ndarray:
        missing = [c for c in self.features if c not in model_input.columns]
        if missing:
            raise ValueError(f"input frame lacks the model's feature columns {missing}")
        proba = np.asarray(self.estimator.predict_proba(model_input[self.features]), dtype=float)
        return proba[:, 1] if proba.ndim == 2 else proba


def as_pyfunc(model: Any, features: list[str]) -> tuple[mlflow.pyfunc.PythonModel, str | None]:
    """The model as a pyfunc, and the distribution it needs at load time (None: unknown).
    Refuses, naming the type, anything that cannot score rows."""
    if isinstance(model, mlflow.pyfunc.PythonModel):
        return model, None
    if not callable(getattr(model, "predict_proba", None)):
        raise TypeError(f"the trainer returned a {type(model).__name__}, which is neither an "
                        "mlflow.pyfunc.PythonModel nor an estimator with predict_proba")
    root = type(model).__module__.split(".")[0]
    return EstimatorModel(model, features), {"sklearn": "scikit-learn"}.get(root, root)


def positive_scores(model: mlflow.pyfunc.PythonModel, frame: pd.DataFrame) -> np.ndarray:
    """P(positive) per row from a pyfunc's predict (one column, or two class columns)."""
    output = np.asarray(model.predict(None, frame), dtype=float)
    return output[:, 1] if output.ndim == 2 else output
