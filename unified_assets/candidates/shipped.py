"""The two candidates that ship: gradient-boosted trees (scikit-learn, CPU profile) and a
multilayer perceptron (PyTorch, GPU profile, CPU fallback). Declared like a user's own."""

from __future__ import annotations

from importlib.metadata import version as installed_version
from typing import TYPE_CHECKING, Literal

import dagster as dg
from pydantic import Field

from unified_assets.candidates.declaration import Candidate, TrainedModel, TrainingContext

if TYPE_CHECKING:
    from unified_assets.ml.training_data import TrainingSet


class SklearnModelConfig(dg.Config):
    max_iter: int = Field(default=200, ge=1, description="Boosting iterations.")
    learning_rate: float = Field(default=0.08, gt=0.0, le=1.0, description="Shrinkage per step.")
    max_leaf_nodes: int = Field(default=31, ge=2, description="Tree size.")
    l2_regularization: float = Field(default=1.0, ge=0.0, description="L2 penalty on leaves.")
    seed: int = Field(default=7, description="Random seed, fixed for repeatable training.")
    max_category_levels: int = Field(
        default=100, ge=1, le=253,
        description="Levels kept per categorical (most frequent first); the rest share <other>.",
    )


class TorchModelConfig(dg.Config):
    hidden_units: int = Field(default=64, ge=2, description="Width of the first hidden layer.")
    epochs: int = Field(default=8, ge=1, description="Passes over the training rows.")
    batch_size: int = Field(default=512, ge=1, description="Rows per gradient step.")
    learning_rate: float = Field(default=2e-3, gt=0.0, le=1.0, description="Adam step size.")
    weight_decay: float = Field(default=1e-4, ge=0.0, description="Adam weight decay.")
    seed: int = Field(default=7, description="Random seed, fixed for repeatable training.")
    device: Literal["auto", "cpu", "cuda"] = Field(
        default="auto", description="auto: CUDA when present, else CPU (recorded in metadata)."
    )
    max_category_levels: int = Field(
        default=100, ge=1, le=253,
        description="One-hot columns per categorical (most frequent levels); the rest share <other>.",
    )


def _levels_metadata(levels) -> dict:
    """The one-hot/level cap and how many training levels it folded into <other>."""
    summary = levels.metadata()
    return {
        "category_levels_cap": dg.MetadataValue.int(summary["category_levels_cap"]),
        "category_levels_folded": dg.MetadataValue.int(summary["category_levels_folded"]),
        "category_levels_folded_by_column": dg.MetadataValue.json(
            summary["category_levels_folded_by_column"]),
    }


def train_gradient_boosting(training: TrainingSet, config: SklearnModelConfig,
                            context: TrainingContext) -> TrainedModel:
    from unified_assets.ml.sklearn_model import SklearnParams, SklearnRiskModel, fit_sklearn

    result = fit_sklearn(training.train, training.numeric_features,
                         training.categorical_features, training.target,
                         SklearnParams(**config.model_dump()))
    # A pyfunc, so the registered model maps raw frames (nulls, nullable/int/bool categoricals,
    # unseen levels) to the fitted levels before the pipeline, as the torch model does.
    model = SklearnRiskModel(result.pipeline, result.levels, training.numeric_features,
                             training.categorical_features)
    return TrainedModel(
        model=model,
        pip_requirements=[f"scikit-learn=={installed_version('scikit-learn')}", "pandas"],
        metadata={"device": "cpu", **_levels_metadata(result.levels)},
    )


def train_mlp(training: TrainingSet, config: TorchModelConfig,
              context: TrainingContext) -> TrainedModel:
    from unified_assets.ml.torch_model import TorchParams, TorchRiskModel, train_torch

    device = context.device if config.device == "auto" else config.device
    params = TorchParams(**(config.model_dump() | {"device": device}))
    result = train_torch(training.train, training.numeric_features,
                         training.categorical_features, training.target, params)
    context.log(f"torch trained on {result.device.device}: {result.device.reason}")
    return TrainedModel(
        model=TorchRiskModel.from_training(result, params),
        metrics={"fit_seconds": result.seconds, "final_loss": result.final_loss},
        pip_requirements=[f"torch=={installed_version('torch').split('+')[0]}", "pandas"],
        tags={"device": result.device.device},
        metadata={
            "device": dg.MetadataValue.text(result.device.device),
            "device_reason": dg.MetadataValue.text(
                context.placement_reason if device == "cpu" and config.device == "auto"
                else result.device.reason),
            "cuda_available": result.device.cuda_available,
            **_levels_metadata(result.encoder.levels),
            "numeric_missing_indicators": dg.MetadataValue.json(result.encoder.missing_indicators),
        },
    )


SKLEARN = Candidate(
    name="sklearn",
    trainer=train_gradient_boosting,
    config=SklearnModelConfig,
    compute="cpu-training",
    kinds=frozenset({"scikit-learn"}),
    description=(
        "Gradient-boosted trees (scikit-learn HistGradientBoosting) logged to MLflow as a pyfunc "
        "(raw frame in, fitted levels applied); metadata says the category-level cap."),
)
TORCH = Candidate(
    name="torch",
    trainer=train_mlp,
    config=TorchModelConfig,
    compute="gpu-training",
    kinds=frozenset({"pytorch"}),
    description=(
        "A multilayer perceptron in PyTorch logged to MLflow as a pyfunc. On CUDA when the host "
        "has it, otherwise on CPU, and the metadata says which and why."),
)
SHIPPED: dict[str, Candidate] = {c.name: c for c in (SKLEARN, TORCH)}
