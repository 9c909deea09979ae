"""The CPU candidate: histogram gradient boosting in a self-contained sklearn pipeline."""

from __future__ import annotations

from dataclasses import dataclass

import mlflow.pyfunc
import numpy as np
import pandas as pd

from unified_assets.ml.features import DEFAULT_MAX_LEVELS, CategoryLevels, numeric_matrix


@dataclass(frozen=True)
class SklearnParams:
    max_iter: int = 200
    learning_rate: float = 0.08
    max_leaf_nodes: int = 31
    l2_regularization: float = 1.0
    seed: int = 7
    max_category_levels: int = DEFAULT_MAX_LEVELS


@dataclass
class SklearnTrainingResult:
    pipeline: object  # sklearn Pipeline: encoder + HistGradientBoostingClassifier
    levels: CategoryLevels


def prepare_frame(frame: pd.DataFrame, levels: CategoryLevels, numeric: list[str],
                  categorical: list[str]) -> pd.DataFrame:
    """What the pipeline sees: categoricals as their kept level (str, NaN for none), numerics as
    float64 with NaN for nulls, whatever dtypes the frame came in."""
    numbers = pd.DataFrame(numeric_matrix(frame, numeric), columns=numeric, index=frame.index)
    return pd.concat([levels.prepare(frame[categorical]), numbers], axis=1)


def fit_sklearn(train: pd.DataFrame, numeric: list[str], categorical: list[str], target: str,
                params: SklearnParams) -> SklearnTrainingResult:
    """Levels capped at fit (<other>, <missing>) feed the trees' native categorical splits;
    numeric nulls stay NaN, for which each split learns a side (no imputation needed)."""
    from sklearn.compose import ColumnTransformer
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OrdinalEncoder

    levels = CategoryLevels.fit(train, categorical, params.max_category_levels)
    # Only sklearn types in the pipeline, so it still serialises with skops when registered with
    # the sklearn flavour; the level mapping runs before it (prepare_frame, SklearnRiskModel).
    encode = ColumnTransformer(
        [
            ("categorical", OrdinalEncoder(categories=[levels.vocab[c] for c in categorical],
                                           handle_unknown="use_encoded_value", unknown_value=-1,
                                           encoded_missing_value=-1), categorical),
            ("numeric", "passthrough", numeric),
        ],
        verbose_feature_names_out=False,
    )
    model = HistGradientBoostingClassifier(
        max_iter=params.max_iter,
        learning_rate=params.learning_rate,
        max_leaf_nodes=params.max_leaf_nodes,
        l2_regularization=params.l2_regularization,
        categorical_features=list(range(len(categorical))),
        early_stopping=False,
        random_state=params.seed,
    )
    pipeline = Pipeline([("encode", encode), ("model", model)])
    pipeline.fit(prepare_frame(train, levels, numeric, categorical), train[target].to_numpy())
    return SklearnTrainingResult(pipeline, levels)


def train_sklearn(train: pd.DataFrame, numeric: list[str], categorical: list[str], target: str,
                  params: SklearnParams):
    """The bare pipeline: scores raw frames whose categoricals are plain strings (an unknown or
    null level takes the trees' missing-value side); SklearnRiskModel scores any frame."""
    return fit_sklearn(train, numeric, categorical, target, params).pipeline


class SklearnRiskModel(mlflow.pyfunc.PythonModel):
    """MLflow pyfunc that maps a raw feature frame to the fitted levels, then scores it."""

    def __init__(self, pipeline, levels: CategoryLevels, numeric: list[str],
                 categorical: list[str]) -> None:
        self.pipeline, self.levels = pipeline, levels
        self.numeric, self.categorical = numeric, categorical

    def score(self, frame: pd.DataFrame) -> np.ndarray:
        prepared = prepare_frame(frame, self.levels, self.numeric, self.categorical)
        return self.pipeline.predict_proba(prepared)[:, 1].astype(np.float64)

    def predict(self, context, model_input: pd.DataFrame, params=None) -> np.ndarray:
        return self.score(model_input)
