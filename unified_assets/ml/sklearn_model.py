"""The CPU candidate: histogram gradient boosting in a self-contained sklearn pipeline."""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd


@dataclass(frozen=True)
class SklearnParams:
    max_iter: int = 200
    learning_rate: float = 0.08
    max_leaf_nodes: int = 31
    l2_regularization: float = 1.0
    seed: int = 7


def train_sklearn(train: pd.DataFrame, numeric: list[str], categorical: list[str], target: str,
                  params: SklearnParams):
    """Fit a pipeline that takes the raw feature frame, so the registered model scores it as is."""
    from sklearn.compose import ColumnTransformer
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OrdinalEncoder

    encode = ColumnTransformer(
        [
            ("categorical", OrdinalEncoder(handle_unknown="use_encoded_value", unknown_value=-1,
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
    pipeline.fit(train[categorical + numeric], train[target].to_numpy())
    return pipeline
