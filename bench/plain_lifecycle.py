"""The lifecycle's computations called directly, with no Dagster run, step or IO manager.

The baseline of `bench/lifecycle_overhead.py`: the same functions, resources (as plain
pydantic objects), policy and defaults the assets use, in the order the assets run, with
values passed in memory. Dagster-only work (run/event storage, asset metadata and check
results, IO-manager pickling, partition bookkeeping) is left out on purpose: that is what
is measured. Mirrors: landed_batch, training_set, model_sklearn and model_torch (each with
its start-of-step placement decision), evaluation_<family> (the asset's own report with its
single-feature AUCs, policy gates, the JSON logged to the candidate's MLflow run),
challenger, approval (policy approval, no UI decision) and production_model (promotion
through the ledger). Keep it in step with unified_assets/assets/*.py.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from importlib.metadata import version as installed_version
from typing import Any

import pandas as pd

from resources import ArtifactStore, DatasetResource, MlflowRegistry, RegisteredCandidate
from resources.decision_store import DecisionStore
from resources.mlflow_registry import CHALLENGER_ALIAS, CHAMPION_ALIAS
from unified_assets.assets.evaluation import evaluate_candidate, log_report
from unified_assets.assets.training import TrainingSetConfig, select_window
from unified_assets.candidates.shipped import SklearnModelConfig, TorchModelConfig
from unified_assets.compute import CPU_TRAINING, GPU_TRAINING, ComputeProfile
from unified_assets.gates import judge, select_challenger
from unified_assets.ml.batch_validation import curated, validate_batch_file
from unified_assets.ml.features import holdout_mask
from unified_assets.ml.metrics import binary_metrics
from unified_assets.ml.sklearn_model import SklearnParams, SklearnRiskModel, fit_sklearn
from unified_assets.ml.training_data import TrainingSet
from unified_assets.placement import Decision
from unified_assets.policy import Policy, PromotionPolicy, load_policy
from unified_assets.services.champion import ChampionLedger
from unified_assets.services.promotion import promote_approved, settle_approval
from unified_assets.settings import Settings
from unified_assets.values import (
    ApprovalRecord,
    CandidateOutcome,
    ChallengerChoice,
    EvaluationReport,
    GateOutcome,
)


def curated_key(batch: str) -> str:
    """The plain baseline keeps its own files (Dagster's values live in the IO manager)."""
    return f"batches/{batch}.parquet"


def report_key(batch: str) -> str:
    return f"batches/{batch}.report.json"


def profile_key(batch: str) -> str:
    return f"profiles/{batch}.json"


def store_batch_profile(store: ArtifactStore, frame: pd.DataFrame, spec, batch: str) -> dict:
    """The batch's profile on the layout of the first profile stored (as `landed_batch`)."""
    from unified_assets.ml.drift_judgement import batch_profile

    first = store.read_json(profile_key("_layout")) if store.exists(profile_key("_layout")) else None
    profile = batch_profile(frame, spec, first)
    if first is None:
        store.write_json(profile_key("_layout"), profile)
    store.write_json(profile_key(batch), profile)
    return profile


@dataclass
class PlainResult:
    """What the plain run produced, and seconds per phase (named like the Dagster steps)."""

    batches_ingested: list[str] = field(default_factory=list)
    candidates: dict[str, EvaluationReport] = field(default_factory=dict)
    challenger: ChallengerChoice | None = None
    approval: ApprovalRecord | None = None
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
    for batch, landed in dataset.batch_files().items():
        report = validate_batch_file(dataset.fetch(landed), spec)
        dataset.check_unchanged(landed)
        store.write_json(
            report_key(batch),
            {"batch": batch, "file": landed.uri, "rows": report.rows, "passed": report.passed,
             "findings": dict(report.findings)},
        )
        if report.passed:
            frame = curated(report.frame, spec, batch)
            store.write_frame(curated_key(batch), frame)
            store_batch_profile(store, frame, spec, batch)
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


def place(step: str, profile: ComputeProfile, rows: int, policy: Policy) -> Decision:
    """The placement a model step makes at start when its run carries no plan (`_placement`)."""
    from unified_assets.placement import StepRequirement, decide_at_start

    return decide_at_start({}, StepRequirement(step, profile, input_rows=rows, asset_key=step),
                           policy=policy.placement)


def sklearn_candidate(
    training: TrainingSet, registry: MlflowRegistry, policy: Policy, run_id: str
) -> RegisteredCandidate:
    """Place, train, score train AUC, log and register (the `model_sklearn` asset body)."""
    place("model_sklearn", CPU_TRAINING, len(training.train), policy)
    config = SklearnModelConfig()
    started = time.perf_counter()
    result = fit_sklearn(training.train, training.numeric_features,
                         training.categorical_features, training.target,
                         SklearnParams(**config.model_dump()))
    fit_seconds = time.perf_counter() - started
    model = SklearnRiskModel(result.pipeline, result.levels, training.numeric_features,
                             training.categorical_features)
    train_auc = binary_metrics(training.train[training.target],
                               model.score(training.train))["roc_auc"]
    metrics = {"fit_seconds": fit_seconds, "train_roc_auc": train_auc,
               "train_rows": float(len(training.train))}
    return registry.log_candidate(
        model_name=training.dataset_name, family="sklearn", flavor="pyfunc", model=model,
        params=config.model_dump(), metrics=metrics,
        tags=_tags("model_sklearn", training, run_id),
        pip_requirements=[f"scikit-learn=={installed_version('scikit-learn')}", "pandas"],
    )


def torch_candidate(
    training: TrainingSet, registry: MlflowRegistry, policy: Policy, run_id: str
) -> RegisteredCandidate:
    """Place, train, score train AUC, log and register (the `model_torch` asset body)."""
    from unified_assets.ml.torch_model import (
        TorchParams,
        TorchRiskModel,
        predict_scores,
        train_torch,
    )

    placement = place("model_torch", GPU_TRAINING, len(training.train), policy)
    config = TorchModelConfig()
    device = config.device
    if device == "auto":
        device = str(placement.settings.get("device",
                                            "cuda" if placement.target == "gpu" else "cpu"))
    params = TorchParams(**(config.model_dump() | {"device": device}))
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
    registry: MlflowRegistry, decisions: DecisionStore, candidate: RegisteredCandidate,
    training: TrainingSet, promotion: PromotionPolicy, run_id: str,
) -> EvaluationReport:
    """The `evaluation_<family>` body: the asset's own report (holdout and champion metrics,
    single-feature AUCs), judged by the policy and logged as JSON to the candidate's MLflow
    run. Evidently's HTML is `quality_report_<family>`, which the lifecycle job does not wait
    for either."""
    report = evaluate_candidate(candidate, training, registry, decisions, promotion)
    verdict = judge(report, promotion)
    report.gates = {n: GateOutcome(g.passed, g.message) for n, g in verdict.gates.items()}
    report.passed_gates = verdict.passed
    report.blocking_gates = tuple(verdict.blocking)
    if not report.error:
        log_report(registry, candidate.run_id, f"evaluation/{run_id[:8]}", report)
    return report


def select(registry: MlflowRegistry, reports: list[EvaluationReport],
           promotion: PromotionPolicy) -> ChallengerChoice | None:
    """Best candidate passing every blocking gate gets the challenger alias (`challenger`)."""
    chosen, verdicts = select_challenger(reports, promotion)
    if chosen is None:
        return None
    registry.set_alias(chosen.model_name, str(chosen.version), CHALLENGER_ALIAS)
    return ChallengerChoice(
        model_name=chosen.model_name, reason=f"{chosen.who} passed every gate", chosen=chosen,
        candidates={f: CandidateOutcome(v.version, v.passed, v.failures(), v.error)
                    for f, v in verdicts.items()})


def run_plain_lifecycle(settings: Settings, run_id: str = "plain-benchmark") -> PlainResult:
    """Ingest every landed batch, build the training set, train, evaluate, select, promote."""
    dataset, store, registry = plain_resources(settings)
    decisions = DecisionStore(url=settings.decisions_url)
    policy = load_policy(settings.policy_path)
    promotion = policy.promotion
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
    candidates = {"sklearn": sklearn_candidate(training, registry, policy, run_id)}
    lap("model_sklearn")
    candidates["torch"] = torch_candidate(training, registry, policy, run_id)
    lap("model_torch")
    for family, candidate in candidates.items():
        result.candidates[family] = evaluate(registry, decisions, candidate, training,
                                             promotion, run_id)
        lap(f"evaluation_{family}")
    result.challenger = select(registry, list(result.candidates.values()), promotion)
    lap("challenger")
    if result.challenger is not None:  # the `approval` body: the policy's approval service
        result.approval = settle_approval(decisions, registry, policy, result.challenger).record
    lap("approval")
    if result.approval is not None and result.approval.approved:  # `production_model` body
        result.production = promote_approved(ChampionLedger(decisions, registry),
                                             result.approval, run_id)
        registry.alias_version(result.production["model_name"], CHAMPION_ALIAS)
        decisions.changes(result.production["model_name"])
    lap("production_model")
    return result
