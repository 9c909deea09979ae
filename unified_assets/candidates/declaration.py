"""What a candidate model is: one declaration, from which the factory builds its assets.

A candidate is a name, a trainer, a config class and a compute profile. The trainer is plain
code: it takes the training set, its config and where placement put it, and returns a model
MLflow can log. Everything Dagster-facing (the `model_<name>` and `evaluation_<name>` assets,
placement, MLflow registration, gates, selection) is the factory's job, the same for every
candidate, so adding a model is one declaration and touches no other module.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import dagster as dg

from unified_assets.compute import PROFILES, ComputeProfile

if TYPE_CHECKING:
    from unified_assets.ml.training_data import TrainingSet

NAME_PATTERN = re.compile(r"^[a-z][a-z0-9_]{0,39}$")
CANDIDATE_TAG = "unified-ai/candidate"  # on each candidate's model asset: its name


def candidate_names(asset_graph: Any) -> list[str]:
    """The candidates a built asset graph trains (its model assets' tag), for readers of a
    job or run (the CLI, the lifecycle summary) that do not hold the declarations."""
    return sorted(node.tags[CANDIDATE_TAG] for node in asset_graph.asset_nodes
                  if CANDIDATE_TAG in node.tags)


@dataclass(frozen=True)
class TrainingContext:
    """Where the step runs, decided by placement before the step started."""

    device: str  # "cpu" or "cuda": the device placement chose for this step
    placement_reason: str
    log: Callable[[str], None] = print


@dataclass
class TrainedModel:
    """A trainer's result when it has more to say than the model itself.

    `model` is an `mlflow.pyfunc.PythonModel` whose `predict` maps a raw frame to
    positive-class scores, or any estimator with `predict_proba` (scikit-learn, XGBoost,
    LightGBM), which is wrapped to score the training set's feature columns."""

    model: Any
    metrics: dict[str, float] = field(default_factory=dict)  # logged to MLflow and shown
    pip_requirements: list[str] | None = None  # None: derived from the model's library
    metadata: dict[str, Any] = field(default_factory=dict)  # extra asset metadata
    tags: dict[str, str] = field(default_factory=dict)  # extra MLflow run tags


Trainer = Callable[["TrainingSet", Any, TrainingContext], "TrainedModel | Any"]


class NoConfig(dg.Config):
    """For a candidate without hyperparameters."""


@dataclass(frozen=True)
class Candidate:
    """One candidate model. `name` names its assets (`model_<name>`, `evaluation_<name>`) and
    its MLflow runs (the model family); `compute` is a profile or its name ("cpu-training",
    "gpu-training")."""

    name: str
    trainer: Trainer
    config: type[dg.Config] = NoConfig
    compute: ComputeProfile | str = "cpu-training"
    description: str = ""
    kinds: frozenset[str] = frozenset({"mlflow"})

    def __post_init__(self) -> None:
        if not NAME_PATTERN.match(self.name):
            raise ValueError(f"candidate name {self.name!r} must be lowercase letters, digits "
                             "and underscores, starting with a letter (it names assets)")
        if not callable(self.trainer):
            raise ValueError(f"candidate {self.name!r}: trainer {self.trainer!r} is not callable")
        if not (isinstance(self.config, type) and issubclass(self.config, dg.Config)):
            raise ValueError(f"candidate {self.name!r}: config must be a dagster Config class, "
                             f"got {self.config!r}")
        if isinstance(self.compute, str) and self.compute not in PROFILES:
            raise ValueError(f"candidate {self.name!r}: compute {self.compute!r} is not a "
                             f"profile; choose one of {sorted(PROFILES)}")
        object.__setattr__(self, "kinds", frozenset(self.kinds) | {"mlflow"})

    @property
    def profile(self) -> ComputeProfile:
        return PROFILES[self.compute] if isinstance(self.compute, str) else self.compute

    @property
    def model_asset(self) -> str:
        return f"model_{self.name}"

    @property
    def evaluation_asset(self) -> str:
        return f"evaluation_{self.name}"
