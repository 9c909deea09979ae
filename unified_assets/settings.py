"""The one place the environment is read: which deployment, and where local state lives.

Only non-secret choices are read here. Secrets (S3 keys, database passwords) reach
resources through `dg.EnvVar` so they are resolved at run time, never at import.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, cast

DEPLOYMENT_ENV = "UNIFIED_AI_DEPLOYMENT"
HOME_ENV = "UNIFIED_AI_HOME"
DATASET_SPEC_ENV = "UNIFIED_AI_DATASET_SPEC"
POLICY_ENV = "UNIFIED_AI_POLICY"
LANDING_URI_ENV = "UNIFIED_AI_LANDING_URI"
S3_ENDPOINT_ENV = "UNIFIED_AI_S3_ENDPOINT_URL"
MLFLOW_UI_URL_ENV = "UNIFIED_AI_MLFLOW_UI_URL"
CANDIDATES_ENV = "UNIFIED_AI_CANDIDATES"
DAGSTER_URL_ENV = "UNIFIED_AI_DAGSTER_URL"
RAY_ADDRESS_ENV = "RAY_ADDRESS"  # Ray's own name: the dashboard URL jobs are submitted to
EXECUTOR_ENV = "UNIFIED_AI_EXECUTOR"
# Seconds the landing sensor waits before retrying a failed ingestion (doubled per attempt):
# an outage of S3 or the disk is waited out, not hammered. Shortened in the fault tests.
INGEST_RETRY_BACKOFF_ENV = "UNIFIED_AI_INGEST_RETRY_BACKOFF_S"
DEFAULT_INGEST_RETRY_BACKOFF_S = 60.0
SHIPPED_CANDIDATES = ("sklearn", "torch")
LOCAL_MLFLOW_UI_URL = "http://127.0.0.1:5000"  # where scripts/dev.sh starts the MLflow UI
Deployment = Literal["local", "kubernetes", "ray"]
DEPLOYMENTS: tuple[Deployment, ...] = ("local", "kubernetes", "ray")
# The executor each deployment runs its steps with, unless UNIFIED_AI_EXECUTOR names another.
Executor = Literal["multiprocess", "k8s", "ray"]
OWN_EXECUTOR: dict[Deployment, Executor] = {"local": "multiprocess", "kubernetes": "k8s",
                                            "ray": "ray"}
# Executors a deployment may be told to use instead of its own: the production stack on one
# machine (scripts/stack.sh) runs the kubernetes settings path (S3 IO, MLflow server, Postgres
# decision store, signed decisions) with steps as local processes; on a Ray cluster on
# Kubernetes (deploy/ray/raycluster.yaml) the same path runs its steps as Ray jobs. An
# override rather than a fourth deployment name, so every check of "kubernetes" (the signed
# policy guard, the resources) holds unchanged: only where steps run differs.
EXECUTOR_OVERRIDES: tuple[Executor, ...] = ("multiprocess", "ray")
# The settings a step process needs to load the code location as its launcher did: forwarded
# to every Ray job (placement/ray_executor.py). Only non-secret choices: a secret
# (UNIFIED_AI_DECISIONS_URL, UNIFIED_AI_LEDGER_KEY, AWS keys, the webhook) would show in Ray's
# job records; the step's node gets it from its own environment (Secrets on Kubernetes).
STEP_SETTINGS_ENV = (DEPLOYMENT_ENV, HOME_ENV, DATASET_SPEC_ENV, POLICY_ENV, LANDING_URI_ENV,
                     S3_ENDPOINT_ENV, MLFLOW_UI_URL_ENV, CANDIDATES_ENV, DAGSTER_URL_ENV,
                     EXECUTOR_ENV, RAY_ADDRESS_ENV)


@dataclass(frozen=True)
class Settings:
    deployment: Deployment
    home: Path
    dataset_spec: str | None
    policy_path: str | None = None
    landing_uri: str | None = None  # s3://bucket/prefix: land batches and labels in S3
    s3_endpoint: bool = False  # an S3-compatible endpoint is set in UNIFIED_AI_S3_ENDPOINT_URL
    # Where people open MLflow in a browser (report links); None: locally LOCAL_MLFLOW_UI_URL,
    # on Kubernetes the MLflow tracking server's own URL.
    mlflow_ui_url: str | None = None
    # The candidates trained: shipped names or `package.module:NAME` import paths of a
    # `unified_assets.candidates.Candidate` (resolved when the definitions are built).
    candidates: tuple[str, ...] = SHIPPED_CANDIDATES
    # A Dagster webserver the CLI submits runs through (GraphQL); None: the DAGSTER_HOME instance.
    dagster_url: str | None = None
    # deployment "ray": the Ray dashboard URL (http://host:8265) every step is submitted to.
    ray_address: str | None = None
    # UNIFIED_AI_EXECUTOR: None runs steps with the deployment's own executor (OWN_EXECUTOR).
    executor_override: Executor | None = None

    @property
    def executor(self) -> Executor:
        """Where steps run: the override when set, else the deployment's own executor."""
        return self.executor_override or OWN_EXECUTOR[self.deployment]

    @property
    def landing_dir(self) -> Path:
        return self.home / "landing"

    @property
    def artifacts_dir(self) -> Path:
        return self.home / "artifacts"

    @property
    def values_dir(self) -> Path:
        """Where the values IO manager keeps asset values (batches, labels) locally."""
        return self.home / "values"

    @property
    def io_dir(self) -> Path:
        return self.home / "io"

    @property
    def decisions_url(self) -> str:
        return f"sqlite:///{self.home / 'decisions.db'}"

    @property
    def dagster_home(self) -> Path:
        return self.home / "dagster_home"

    @property
    def mlflow_tracking_uri(self) -> str:
        return f"sqlite:///{self.home / 'mlflow.db'}"

    @property
    def mlflow_artifact_location(self) -> str:
        return (self.home / "mlartifacts").as_uri()


class SettingsError(ValueError):
    """A setting (environment variable) with a value that cannot be used: names it."""


def load_settings(environ: dict[str, str] | None = None) -> Settings:
    """Settings from the environment; an unknown deployment name is an error, not a default."""
    env = os.environ if environ is None else environ
    deployment = env.get(DEPLOYMENT_ENV, "local").strip() or "local"
    if deployment not in DEPLOYMENTS:
        raise SettingsError(
            f"{DEPLOYMENT_ENV}={deployment!r} is not a deployment; choose one of {DEPLOYMENTS}"
        )
    executor = (env.get(EXECUTOR_ENV) or "").strip() or None
    if executor is not None and executor not in EXECUTOR_OVERRIDES:
        raise SettingsError(
            f"{EXECUTOR_ENV}={executor!r} is not an executor to override with; choose one of "
            f"{EXECUTOR_OVERRIDES} or leave it unset (the deployment's own executor)")
    home = Path(env.get(HOME_ENV) or Path.cwd() / ".unified_ai").resolve()
    landing_uri = env.get(LANDING_URI_ENV) or None
    if landing_uri is not None and not landing_uri.startswith("s3://"):
        raise SettingsError(f"{LANDING_URI_ENV}={landing_uri!r} must be an s3://bucket/prefix URI "
                         "(a local landing folder comes from the dataset spec)")
    return Settings(
        deployment=deployment, home=home, dataset_spec=env.get(DATASET_SPEC_ENV) or None,
        policy_path=env.get(POLICY_ENV) or None, landing_uri=landing_uri,
        s3_endpoint=bool(env.get(S3_ENDPOINT_ENV)),
        mlflow_ui_url=(env.get(MLFLOW_UI_URL_ENV) or "").strip().rstrip("/") or None,
        candidates=tuple(e.strip() for e in env[CANDIDATES_ENV].split(",") if e.strip())
        if env.get(CANDIDATES_ENV, "").strip() else SHIPPED_CANDIDATES,
        dagster_url=(env.get(DAGSTER_URL_ENV) or "").strip() or None,
        ray_address=(env.get(RAY_ADDRESS_ENV) or "").strip() or None,
        executor_override=cast(Executor | None, executor),
    )


def ingest_retry_backoff_s(environ: dict[str, str] | None = None) -> float:
    """UNIFIED_AI_INGEST_RETRY_BACKOFF_S, else 60; a value that is not a number >= 0 is an
    error naming the variable (a typo must not turn retries into a tight loop or off)."""
    env = os.environ if environ is None else environ
    raw = (env.get(INGEST_RETRY_BACKOFF_ENV) or "").strip()
    if not raw:
        return DEFAULT_INGEST_RETRY_BACKOFF_S
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value >= 0 or value == float("inf"):
        raise SettingsError(f"{INGEST_RETRY_BACKOFF_ENV}={raw!r} must be a number of seconds >= 0")
    return value


def policy_choice(settings: Settings) -> tuple[str | None, str]:
    """The policy file that applies and where that choice came from: UNIFIED_AI_POLICY (or
    `demo --policy`), else the `policy:` the dataset spec names (a policy kept next to the
    spec), else None: the policy shipped with the code. Every entry point (code location,
    CLI, demo) asks here, through `definitions.build_definitions`."""
    if settings.policy_path:
        return settings.policy_path, POLICY_ENV
    if settings.dataset_spec:
        from unified_assets.ml.dataset_spec import load_spec

        # A spec that cannot be read fails here, naming the file: if it names a policy,
        # falling back to the shipped one would run under rules nobody chose.
        spec = load_spec(settings.dataset_spec, landing_dir=settings.landing_dir)
        if spec.policy:
            return str(spec.policy), f"dataset spec {settings.dataset_spec}"
    return None, "shipped with the code"

