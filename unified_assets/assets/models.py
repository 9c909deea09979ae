"""Candidate models: scikit-learn on the CPU profile, PyTorch on the GPU profile.

Each logs to MLflow and registers a model version; the asset's value is that
registered version, which is what evaluation and promotion take as input.
"""


import time
from collections.abc import Callable, Iterator
from importlib.metadata import version as installed_version
from typing import Any, Literal

import dagster as dg
from pydantic import Field

from resources.mlflow_registry import MlflowRegistry, RegisteredCandidate
from resources.policy import PolicyResource
from unified_assets.compute import CPU_TRAINING, GPU_TRAINING, ComputeProfile
from unified_assets.gates import CandidateFailure
from unified_assets.metadata import OWNERS, numbers
from unified_assets.ml.training_data import TrainingSet

CANDIDATE_FAMILIES = ("sklearn", "torch")


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


def _run_tags(context: dg.AssetExecutionContext, training: TrainingSet) -> dict[str, str]:
    return {
        "dagster_run_id": context.run_id,
        "dagster_asset": context.asset_key.to_user_string(),
        "training_batches": ",".join(training.batches),
    }


def _train_auc(y, scores) -> float | None:
    from unified_assets.ml.metrics import binary_metrics

    return binary_metrics(y, scores)["roc_auc"]


def _placement(context: dg.AssetExecutionContext, profile: ComputeProfile, rows: int,
               policy: PolicyResource):
    """The final placement of this step: the plan carried in the run tags (or one made now),
    re-validated on this host. A policy that forbids running fails the step clearly."""
    from unified_assets.placement import PlacementError, StepRequirement, decide_at_start

    requirement = StepRequirement(str(context.op_handle), profile, input_rows=rows,
                                  asset_key=context.asset_key.to_user_string())
    try:
        decision = decide_at_start(context.run.tags, requirement,
                                   policy=policy.policy.placement)
    except PlacementError as error:
        if error.retryable:
            raise dg.RetryRequested(max_retries=3, seconds_to_wait=60) from error
        raise dg.Failure(f"placement refused by policy: {error}") from None
    context.log.info(f"placement: {decision.target} ({decision.fallback}): {decision.reason}")
    return decision


def _levels_metadata(levels) -> dict:
    """The one-hot/level cap and how many training levels it folded into <other>."""
    summary = levels.metadata()
    return {
        "category_levels_cap": dg.MetadataValue.int(summary["category_levels_cap"]),
        "category_levels_folded": dg.MetadataValue.int(summary["category_levels_folded"]),
        "category_levels_folded_by_column": dg.MetadataValue.json(
            summary["category_levels_folded_by_column"]),
    }


TRAINED_CHECK = "trained"


def _trained_check(asset_name: str) -> list[dg.AssetCheckSpec]:
    return [dg.AssetCheckSpec(
        TRAINED_CHECK, asset=asset_name,
        description="The candidate trained and was registered. When training fails the asset "
                    "records why and the other candidates still go on to evaluation.",
    )]


def _output(candidate: RegisteredCandidate, extra: dict) -> dg.Output[RegisteredCandidate]:
    return dg.Output(
        candidate,
        metadata={
            "model_version": dg.MetadataValue.text(candidate.version),
            "registry_uri": dg.MetadataValue.text(candidate.registry_uri),
            "mlflow_run_id": dg.MetadataValue.text(candidate.run_id),
            **extra,
        },
    )


def _train_independently(
    context: dg.AssetExecutionContext, family: str, model_name: str,
    train: Callable[[], dg.Output[RegisteredCandidate]],
) -> Iterator[Any]:
    """Run one candidate's training so that its failure is this candidate's outcome, not the
    run's: a failed step would skip every step downstream of it, the other candidate's
    evaluation and the challenger included. Placement refusals and retries still fail or
    retry the step (they are the policy speaking, escalated by the failure sensor)."""
    try:
        output = train()
    except (dg.Failure, dg.RetryRequested):
        raise
    except Exception as error:  # noqa: BLE001 - recorded as this candidate's failure
        message = f"{type(error).__name__}: {error}".strip()
        context.log.error(f"{family} candidate failed to train: {message}")
        yield dg.Output(
            CandidateFailure(family=family, model_name=model_name, error=message),
            metadata={"model_version": dg.MetadataValue.text("none"),
                      "training_error": dg.MetadataValue.text(message[:2000])},
        )
        yield dg.AssetCheckResult(
            check_name=TRAINED_CHECK, passed=False, severity=dg.AssetCheckSeverity.ERROR,
            metadata={"error": dg.MetadataValue.text(message[:2000])},
            description=f"training failed: {message[:300]}",
        )
        return
    yield output
    yield dg.AssetCheckResult(check_name=TRAINED_CHECK, passed=True,
                              metadata={"model_version": output.value.version})


@dg.asset(
    group_name="training",
    kinds={"scikit-learn", "mlflow"},
    owners=OWNERS,
    description=(
        "Gradient-boosted trees (scikit-learn HistGradientBoosting) trained on the training "
        "set, logged to MLflow as a pyfunc (raw frame in, fitted levels applied) and registered "
        "as a new model version. Runs on the CPU profile; metadata says the category-level cap."
    ),
    check_specs=_trained_check("model_sklearn"),
    **CPU_TRAINING.asset_kwargs(),
)
def model_sklearn(
    context: dg.AssetExecutionContext,
    config: SklearnModelConfig,
    training_set: TrainingSet,
    mlflow_registry: MlflowRegistry,
    policy: PolicyResource,
) -> Iterator[Any]:
    placement = _placement(context, CPU_TRAINING, len(training_set.train), policy)
    yield from _train_independently(
        context, "sklearn", training_set.dataset_name,
        lambda: _train_sklearn(context, config, training_set, mlflow_registry, placement))


def _train_sklearn(context: dg.AssetExecutionContext, config: SklearnModelConfig,
                   training_set: TrainingSet, mlflow_registry: MlflowRegistry,
                   placement) -> dg.Output[RegisteredCandidate]:
    from unified_assets.ml.sklearn_model import SklearnParams, SklearnRiskModel, fit_sklearn
    from unified_assets.placement import decision_metadata

    params = SklearnParams(**config.model_dump())
    started = time.perf_counter()
    result = fit_sklearn(training_set.train, training_set.numeric_features,
                         training_set.categorical_features, training_set.target, params)
    fit_seconds = time.perf_counter() - started
    # A pyfunc, so the registered model maps raw frames (nulls, nullable/int/bool categoricals,
    # unseen levels) to the fitted levels before the pipeline, as the torch model does.
    model = SklearnRiskModel(result.pipeline, result.levels, training_set.numeric_features,
                             training_set.categorical_features)
    train_auc = _train_auc(training_set.train[training_set.target], model.score(training_set.train))
    metrics = {"fit_seconds": fit_seconds, "train_roc_auc": train_auc,
               "train_rows": float(len(training_set.train))}
    candidate = mlflow_registry.log_candidate(
        model_name=training_set.dataset_name, family="sklearn", flavor="pyfunc", model=model,
        params=config.model_dump(), metrics=metrics, tags=_run_tags(context, training_set),
        pip_requirements=[f"scikit-learn=={installed_version('scikit-learn')}", "pandas"],
    )
    return _output(candidate, {"device": "cpu", **numbers(metrics), **_levels_metadata(result.levels),
                               **decision_metadata(placement)})


@dg.asset(
    group_name="training",
    kinds={"pytorch", "mlflow"},
    owners=OWNERS,
    description=(
        "A multilayer perceptron in PyTorch trained on the training set, logged to MLflow as "
        "a pyfunc and registered as a new model version. Runs on the GPU profile: on CUDA when "
        "the host has it, otherwise on CPU, and the metadata says which and why."
    ),
    check_specs=_trained_check("model_torch"),
    **GPU_TRAINING.asset_kwargs(),
)
def model_torch(
    context: dg.AssetExecutionContext,
    config: TorchModelConfig,
    training_set: TrainingSet,
    mlflow_registry: MlflowRegistry,
    policy: PolicyResource,
) -> Iterator[Any]:
    placement = _placement(context, GPU_TRAINING, len(training_set.train), policy)
    yield from _train_independently(
        context, "torch", training_set.dataset_name,
        lambda: _train_torch(context, config, training_set, mlflow_registry, placement))


def _train_torch(context: dg.AssetExecutionContext, config: TorchModelConfig,
                 training_set: TrainingSet, mlflow_registry: MlflowRegistry,
                 placement) -> dg.Output[RegisteredCandidate]:
    from unified_assets.ml.torch_model import (
        TorchParams,
        TorchRiskModel,
        predict_scores,
        train_torch,
    )
    from unified_assets.placement import decision_metadata

    device = config.device
    if device == "auto":
        device = str(placement.settings.get("device", "cuda" if placement.target == "gpu" else "cpu"))
    params = TorchParams(**(config.model_dump() | {"device": device}))
    result = train_torch(training_set.train, training_set.numeric_features,
                         training_set.categorical_features, training_set.target, params)
    context.log.info(f"torch trained on {result.device.device}: {result.device.reason}")
    train_auc = _train_auc(training_set.train[training_set.target],
                           predict_scores(result.network, result.encoder, training_set.train))
    metrics = {"fit_seconds": result.seconds, "train_roc_auc": train_auc,
               "final_loss": result.final_loss, "train_rows": float(len(training_set.train))}
    candidate = mlflow_registry.log_candidate(
        model_name=training_set.dataset_name, family="torch", flavor="pyfunc",
        model=TorchRiskModel.from_training(result, params), params=config.model_dump(),
        metrics=metrics, tags=_run_tags(context, training_set) | {"device": result.device.device},
        pip_requirements=[f"torch=={installed_version('torch').split('+')[0]}", "pandas"],
    )
    return _output(
        candidate,
        {
            "device": dg.MetadataValue.text(result.device.device),
            "device_reason": dg.MetadataValue.text(
                placement.reason if placement.target == "cpu" else result.device.reason),
            "cuda_available": result.device.cuda_available,
            **_levels_metadata(result.encoder.levels),
            "numeric_missing_indicators": dg.MetadataValue.json(result.encoder.missing_indicators),
            **numbers(metrics),
            **decision_metadata(placement),
        },
    )
