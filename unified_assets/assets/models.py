"""Candidate model assets, one per declared candidate (`unified_assets.candidates`).

Each trains on the training set where placement put it, logs to MLflow and registers a model
version; the asset's value is that registered version, which is what evaluation and promotion
take as input. A candidate whose training fails yields a `CandidateFailure` instead, so the
other candidates still reach evaluation and selection in the same run.
"""

import time
from collections.abc import Iterator
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as installed_version
from typing import Any

import dagster as dg

from resources.mlflow_registry import TRAINING_BATCHES_TAG, MlflowRegistry, RegisteredCandidate
from resources.policy import PolicyResource
from unified_assets.candidates import CANDIDATE_TAG, Candidate, TrainedModel, TrainingContext
from unified_assets.compute import ComputeProfile
from unified_assets.gates import CandidateFailure
from unified_assets.metadata import OWNERS, numbers
from unified_assets.ml.training_data import TrainingSet

TRAINED_CHECK = "trained"


def _run_tags(context: dg.AssetExecutionContext, training: TrainingSet) -> dict[str, str]:
    return {
        "dagster_run_id": context.run_id,
        "dagster_asset": context.asset_key.to_user_string(),
        TRAINING_BATCHES_TAG: ",".join(training.batches),
    }


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


def _requirements(trained: TrainedModel, library: str | None) -> list[str]:
    if trained.pip_requirements is not None:
        return trained.pip_requirements
    pinned = []
    for dist in filter(None, {library, "pandas"}):
        try:
            pinned.append(f"{dist}=={installed_version(dist).split('+')[0]}")
        except PackageNotFoundError:
            pinned.append(dist)
    return sorted(pinned)


def train_and_register(context: dg.AssetExecutionContext, candidate: Candidate, config: Any,
                       training: TrainingSet, registry: MlflowRegistry,
                       placement) -> dg.Output[RegisteredCandidate]:
    """Train one candidate, score it on its own rows and register it in MLflow."""
    from unified_assets.ml.estimator_model import as_pyfunc, positive_scores
    from unified_assets.ml.metrics import binary_metrics
    from unified_assets.placement import decision_metadata

    device = str(placement.settings.get("device", "cuda" if placement.target == "gpu" else "cpu"))
    started = time.perf_counter()
    result = candidate.trainer(training, config,
                               TrainingContext(device, placement.reason, context.log.info))
    fit_seconds = time.perf_counter() - started
    trained = result if isinstance(result, TrainedModel) else TrainedModel(model=result)
    features = training.numeric_features + training.categorical_features
    model, library = as_pyfunc(trained.model, features)
    train_auc = binary_metrics(training.train[training.target],
                               positive_scores(model, training.train))["roc_auc"]
    metrics = {"fit_seconds": fit_seconds, "train_roc_auc": train_auc,
               "train_rows": float(len(training.train))} | trained.metrics
    registered = registry.log_candidate(
        model_name=training.dataset_name, family=candidate.name, flavor="pyfunc", model=model,
        params=config.model_dump(), metrics=metrics,
        tags=_run_tags(context, training) | trained.tags,
        pip_requirements=_requirements(trained, library),
    )
    return dg.Output(registered, metadata={
        "model_version": dg.MetadataValue.text(registered.version),
        "registry_uri": dg.MetadataValue.text(registered.registry_uri),
        "mlflow_run_id": dg.MetadataValue.text(registered.run_id),
        **({"device": device} if "device" not in trained.metadata else {}),
        **trained.metadata,
        **numbers(metrics),
        **decision_metadata(placement),
    })


def _train_independently(context: dg.AssetExecutionContext, candidate: Candidate, config: Any,
                         training: TrainingSet, registry: MlflowRegistry,
                         placement) -> Iterator[Any]:
    """Run one candidate's training so that its failure is this candidate's outcome, not the
    run's: a failed step would skip every step downstream of it, the other candidates'
    evaluations and the challenger included. Placement refusals and retries still fail or
    retry the step (they are the policy speaking, escalated by the failure sensor)."""
    from unified_assets.placement.ray_step import exit_on_oom

    try:
        # On Ray, running out of memory (host or CUDA) ends the step for a retry on the larger
        # profile the policy names, rather than becoming this candidate's failure.
        with exit_on_oom():
            output = train_and_register(context, candidate, config, training, registry,
                                        placement)
    except (dg.Failure, dg.RetryRequested):
        raise
    except Exception as error:  # noqa: BLE001 - recorded as this candidate's failure
        message = f"{type(error).__name__}: {error}".strip()
        context.log.error(f"{candidate.name} candidate failed to train: {message}")
        yield dg.Output(
            CandidateFailure(family=candidate.name, model_name=training.dataset_name,
                             error=message),
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


def build_model_asset(candidate: Candidate) -> dg.AssetsDefinition:
    """The `model_<name>` asset of one declared candidate."""
    profile = candidate.profile
    config_class = candidate.config

    @dg.asset(
        name=candidate.model_asset,
        group_name="training",
        kinds=set(candidate.kinds),
        owners=OWNERS,
        description=(
            f"Candidate `{candidate.name}`: {candidate.description or 'a declared candidate.'} "
            f"Trained on the training set on the {profile.name} profile, logged to MLflow and "
            "registered as a new model version (the asset's value)."
        ),
        tags={CANDIDATE_TAG: candidate.name},
        check_specs=[dg.AssetCheckSpec(
            TRAINED_CHECK, asset=candidate.model_asset,
            description="The candidate trained and was registered. When training fails the "
                        "asset records why and the other candidates still go on to evaluation.",
        )],
        **profile.asset_kwargs(),
    )
    def _model(
        context: dg.AssetExecutionContext,
        config: config_class,  # type: ignore[valid-type]  # the declaration's Config class
        training_set: TrainingSet,
        mlflow_registry: MlflowRegistry,
        policy: PolicyResource,
    ) -> Iterator[Any]:
        placement = _placement(context, profile, len(training_set.train), policy)
        yield from _train_independently(context, candidate, config, training_set,
                                        mlflow_registry, placement)

    return _model
