"""The lifecycle's computations called directly, with no Dagster run, step or IO manager.

The baseline of `bench/lifecycle_overhead.py`: the same functions, resources (as plain
pydantic objects) and defaults the assets use, in the order the assets run, with values
passed in memory. Dagster-only work (run/event storage, asset metadata, IO-manager
pickling, partition bookkeeping) is left out on purpose: that is what is measured.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from importlib.metadata import version as installed_version
from typing import Any

import pandas as pd

from resources import ArtifactStore, DatasetResource, MlflowRegistry, RegisteredCandidate
from unified_assets.assets.data import curated_key, report_key
from unified_assets.assets.deployment import choose_promotion
from unified_assets.assets.evaluation import EvaluationConfig, evaluate_on_holdout
from unified_assets.assets.evaluation import report_key as evaluation_report_key
from unified_assets.assets.models import SklearnModelConfig, TorchModelConfig
from unified_assets.assets.training import TrainingSetConfig, select_window
from unified_assets.ml.batch_validation import curated, validate_batch_file
from unified_assets.ml.features import holdout_mask
from unified_assets.ml.metrics import binary_metrics
from unified_assets.ml.sklearn_model import SklearnParams, train_sklearn
from unified_assets.ml.training_data import TrainingSet
from unified_assets.settings import Settings


@dataclass
class PlainResult:
    """What the plain run produced, and seconds per phase (named like the Dagster steps)."""

    batches_ingested: list[str] = field(default_factory=list)
    candidates: dict[str, dict[str, Any]] = field(default_factory=dict)
    production: dict[str, Any] = field(default_factory=dict)
    phases: dict[str, float] = field(default_factory=dict)


def plain_resources(settings: Settings) -> tuple[DatasetResource, ArtifactStore, MlflowRegistry]:
    """The local resources of `unified_assets.definitions.local_resources`, minus the IO manager."""
    return (
        DatasetResource(spec_path=settings.dataset_spec, landing_dir=str(settings.landing_dir)),
        ArtifactStore(root=str(settings.artifacts_dir)),
        MlflowRegistry(tracking_uri=settings.mlflow_tracking_uri,
                       artifact_location=settings.mlflow_artifact_location),
    )


def _tags(asset: str, training: TrainingSet, run_id: str) -> dict[str, str]:
    return {"dagster_run_id": run_id, "dagster_asset": asset,
            "training_batches": ",".join(training.batches)}


def ingest(dataset: DatasetResource, store: ArtifactStore) -> list[str]:
    """Validate, curate and store every landed batch (the `landed_batch` asset body)."""
    spec = dataset.spec
    ingested = []
    for batch, path in dataset.batch_files().items():
        report = validate_batch_file(path, spec)
        store.write_json(
            report_key(batch),
            {"batch": batch, "file": str(path), "rows": report.rows, "passed": report.passed,
             "findings": dict(report.findings)},
        )
        if report.passed:
            store.write_frame(curated_key(batch), curated(report.frame, spec, batch))
        ingested.append(batch)
    return ingested


def build_training_set(
    dataset: DatasetResource, store: ArtifactStore, ingested: list[str], config: TrainingSetConfig
) -> TrainingSet:
    """Window of valid batches read back from the store, split by the hash holdout."""
    spec = dataset.spec
    reports = {b: store.read_json(report_key(b)) for b in ingested if store.exists(report_key(b))}
    window, excluded = select_window(ingested, set(ingested), reports, config.window_batches)
    if not window:
        raise RuntimeError(f"no valid batch to train on: {excluded}")
    frame = pd.concat([store.read_frame(curated_key(b)) for b in window], ignore_index=True)
    in_holdout = holdout_mask(frame["row_id"], config.holdout_fraction)
    return TrainingSet(
        train=frame[~in_holdout].reset_index(drop=True),
        holdout=frame[in_holdout].reset_index(drop=True),
        batches=window, target=spec.target, numeric_features=spec.numeric_features,
        categorical_features=spec.categorical_features, segment_columns=spec.segment_columns,
        dataset_name=spec.name, excluded_batches=excluded,
    )


def sklearn_candidate(
    training: TrainingSet, registry: MlflowRegistry, run_id: str
) -> RegisteredCandidate:
    """Train, score train AUC, log and register (the `model_sklearn` asset body)."""
    config = SklearnModelConfig()
    started = time.perf_counter()
    pipeline = train_sklearn(training.train, training.numeric_features,
                             training.categorical_features, training.target,
                             SklearnParams(**config.model_dump()))
    fit_seconds = time.perf_counter() - started
    features = training.categorical_features + training.numeric_features
    train_auc = binary_metrics(training.train[training.target],
                               pipeline.predict_proba(training.train[features])[:, 1])["roc_auc"]
    metrics = {"fit_seconds": fit_seconds, "train_roc_auc": train_auc,
               "train_rows": float(len(training.train))}
    return registry.log_candidate(
        model_name=training.dataset_name, family="sklearn", flavor="sklearn", model=pipeline,
        params=config.model_dump(), metrics=metrics,
        tags=_tags("model_sklearn", training, run_id),
        pip_requirements=[f"scikit-learn=={installed_version('scikit-learn')}", "pandas"],
    )


def torch_candidate(
    training: TrainingSet, registry: MlflowRegistry, run_id: str
) -> RegisteredCandidate:
    """Train, score train AUC, log and register (the `model_torch` asset body)."""
    from unified_assets.ml.torch_model import (
        TorchParams,
        TorchRiskModel,
        predict_scores,
        train_torch,
    )

    config = TorchModelConfig()
    params = TorchParams(**config.model_dump())
    result = train_torch(training.train, training.numeric_features,
                         training.categorical_features, training.target, params)
    train_auc = binary_metrics(training.train[training.target],
                               predict_scores(result.network, result.encoder,
                                              training.train))["roc_auc"]
    metrics = {"fit_seconds": result.seconds, "train_roc_auc": train_auc,
               "final_loss": result.final_loss, "train_rows": float(len(training.train))}
    return registry.log_candidate(
        model_name=training.dataset_name, family="torch", flavor="pyfunc",
        model=TorchRiskModel.from_training(result, params), params=config.model_dump(),
        metrics=metrics,
        tags=_tags("model_torch", training, run_id) | {"device": result.device.device},
        pip_requirements=[f"torch=={installed_version('torch').split('+')[0]}", "pandas"],
    )


def evaluate(
    registry: MlflowRegistry, store: ArtifactStore, candidate: RegisteredCandidate,
    training: TrainingSet,
) -> dict:
    """Holdout report stored as JSON (the `evaluation_<family>` asset body)."""
    report = evaluate_on_holdout(registry, candidate, training, EvaluationConfig().threshold)
    report["report_uri"] = store.write_json(
        evaluation_report_key(candidate.model_name, candidate.version), report
    )
    return report


def promote(registry: MlflowRegistry, reports: list[dict]) -> dict:
    """Move the champion alias if a candidate beats it (the `production_model` asset body)."""
    model_name = reports[0]["model_name"]
    previous = registry.alias_version(model_name)
    chosen, reason = choose_promotion(reports, previous)
    if chosen is not None:
        registry.set_alias(model_name, chosen["version"])
    return {"model_name": model_name, "champion_version": registry.alias_version(model_name),
            "previous_champion": previous, "promoted": chosen is not None, "reason": reason}


def run_plain_lifecycle(settings: Settings, run_id: str = "plain-benchmark") -> PlainResult:
    """Ingest every landed batch, build the training set, train, evaluate and promote."""
    dataset, store, registry = plain_resources(settings)
    result = PlainResult()
    clock = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        result.phases[name] = now - clock
        clock = now

    result.batches_ingested = ingest(dataset, store)
    lap("ingest (all batches)")
    training = build_training_set(dataset, store, result.batches_ingested, TrainingSetConfig())
    lap("training_set")
    candidates = {"sklearn": sklearn_candidate(training, registry, run_id)}
    lap("model_sklearn")
    candidates["torch"] = torch_candidate(training, registry, run_id)
    lap("model_torch")
    for family, candidate in candidates.items():
        result.candidates[family] = evaluate(registry, store, candidate, training)
        lap(f"evaluation_{family}")
    result.production = promote(registry, [result.candidates["sklearn"], result.candidates["torch"]])
    lap("production_model")
    return result
