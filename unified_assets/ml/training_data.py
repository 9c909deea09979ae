"""The training set handed from the training-set asset to every candidate and evaluation."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pandas as pd


@dataclass
class TrainingSet:
    """Train and holdout rows plus what a model needs to know about their columns."""

    train: pd.DataFrame
    holdout: pd.DataFrame
    batches: list[str]
    target: str
    numeric_features: list[str]
    categorical_features: list[str]
    segment_columns: list[str]
    dataset_name: str
    excluded_batches: dict[str, str] = field(default_factory=dict)
