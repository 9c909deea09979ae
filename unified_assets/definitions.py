"""The code location. Cross-cutting choices (resources, executor, automation) are made here
and only here; the deployment comes from `unified_assets.settings`."""


import json

import dagster as dg

from resources import ArtifactStore, DatasetResource, MlflowRegistry, PolicyResource
from resources.decision_store import DecisionStore
from resources.escalation import Escalation
from resources.mlflow_registry import CLIENT_MODULES as MLFLOW_CLIENT_MODULES
from resources.mlflow_registry import DISTRIBUTIONS_WARMUP as MLFLOW_MAP_WARMUP
from resources.parquet_io import VALUES_IO_MANAGER, ParquetIOManager
from sensors.approvals import build_approval_sensor
from sensors.drift import build_drift_sensor
from sensors.failures import run_failure_incidents
from sensors.labels import build_labels_sensor
from sensors.landing import build_landing_sensor
from sensors.live import build_live_sensor
from sensors.retrain import RETRAIN_TAG
from unified_assets import instance_sqlite, local_warm
from unified_assets.assets.backlog import (
    BACKLOG_ASSETS,
    build_backlog_sensor,
    request_audit,
    request_audit_daily,
    request_audit_job,
    support_backlog_job,
)
from unified_assets.assets.data import landed_batch
from unified_assets.assets.deployment import (
    APPROVAL_INPUT,
    approval,
    approval_if_any,
    approval_launchpad,
    production_model,
    rollback_launchpad,
)
from unified_assets.assets.drift_report import drift_report
from unified_assets.assets.evaluation import build_evaluation_asset
from unified_assets.assets.labels import batch_labels
from unified_assets.assets.live import live_performance
from unified_assets.assets.models import build_model_asset
from unified_assets.assets.monitoring import batch_drift
from unified_assets.assets.quality_report import REPORT_TAG, build_quality_report_asset
from unified_assets.assets.selection import build_challenger

# serving (issue 15): the champion and the support workflow on Ray Serve
from unified_assets.assets.serving import (
    build_scaling_sensor,
    build_serving_sensor,
    deploy_serving_job,
    resolve_support_case_job,
    serving,
    support_intent_model,
)
from unified_assets.assets.training import training_set
from unified_assets.candidates import Candidate, resolve_candidates
from unified_assets.compute import COMPUTE_TAG
from unified_assets.partitions import BATCHES
from unified_assets.policy import DEFAULT_POLICY_PATH, PolicyError, load_policy
from unified_assets.run_tags import REPORT_QUEUE, RUN_QUEUE_TAG, TRIGGER_TAG, started_because
from unified_assets.serving.resource import ServingTarget
from unified_assets.settings import Settings, load_settings, policy_choice

# Every process that loads the code location commits to a local (SQLite) instance without a
# WAL checkpoint and fsync per event (unified_assets/instance_sqlite.py).
instance_sqlite.install()

GPU_SLOTS = 1
# With the multiprocess executor (local, and the production stack) every training step is a
# process, GPU-profile steps never exceeding the GPU slots (light jobs: LIGHT_EXECUTOR).
# forkserver: each run starts one server that imports the code location once and forks a
# process per step from it (spawn paid Python + Dagster + code-location imports per step,
# seconds each, for steps that compute for milliseconds).
# What a step process imports after its fork to open the instance (DagsterInstance.from_ref:
# Dagster's SQLite storages, alembic's schema check, SQLAlchemy's dialects, the local event
# log): 0.5-0.7 s per step process before STEP_WORKER_STARTED, measured on a chain of trivial
# steps (0.15-0.2 s with these preloaded). The Ray warm server has its own list
# (placement/ray_warm.py BASE_PRELOAD, with Postgres). A module missing here is skipped.
INSTANCE_PRELOAD = [
    "dagster._core.instance.factory", "dagster._core.storage.legacy_storage",
    "dagster._core.storage.runs.sqlite", "dagster._core.storage.event_log.sqlite",
    "dagster._core.storage.schedules.sqlite", "dagster._core.storage.local_compute_log_manager",
    "dagster._core.storage.migration.utils", "dagster._core.storage.root",
    "dagster._core.run_coordinator.queued_run_coordinator",
    "dagster._core.launcher.default_run_launcher", "dagster._core.secrets.env_file",
    "dagster._core.workspace.context", "dagster._daemon.auto_run_reexecution.event_log_consumer",
    "alembic.command", "upath", "upath.implementations.local", "unified_assets.instance_event_log",
]
# Last in every forkserver's preload: the preload is frozen before each step is forked, so a
# step's full collection does not walk it or make its pages private (forkserver_gc.py).
FORKSERVER_GC = "unified_assets.forkserver_gc"
LOCAL_EXECUTOR_CONFIG = {
    "max_concurrent": 2,
    "start_method": {"forkserver": {"preload_modules": ["unified_assets.definitions",
                                                        *INSTANCE_PRELOAD, FORKSERVER_GC]}},
    "tag_concurrency_limits": [{"key": COMPUTE_TAG, "value": "gpu", "limit": GPU_SLOTS}],
}

# The training run's steps each imported MLflow, torch and scikit-learn (2-2.5 s apiece on 2
# cores) after being forked: its forkserver imports them once, beside the code location, and
# every step starts with them loaded. Only that job: ingestion and decisions never need them.
# (A module that fails to import is skipped by the forkserver; the step then imports it.)
# MLflow's SQLAlchemy stores are imported on a client's first call, not by `import mlflow`:
# 0.5-1 s in each step that talks to the registry (sampled with py-spy), once here.
# torch imports torch._dynamo at a step's first optimizer (1.1-1.8 s) and MLflow maps the
# installed distributions at its first log_model (1.1-1.6 s): once here too.
TRAINING_PRELOAD = [
    "unified_assets.definitions", *INSTANCE_PRELOAD, "pyarrow.parquet", *MLFLOW_CLIENT_MODULES,
    "mlflow.pyfunc", "mlflow.sklearn", "mlflow.store.tracking.sqlalchemy_workspace_store",
    "mlflow.store.model_registry.sqlalchemy_workspace_store", "alembic.migration",
    "sklearn.compose", "sklearn.ensemble", "sklearn.metrics", "sklearn.pipeline",
    "sklearn.preprocessing", "torch", "torch._dynamo", "resources.mlflow_environment",
    "unified_assets.ml.sklearn_model",
    "unified_assets.ml.torch_model", "unified_assets.ml.metrics", FORKSERVER_GC,
]
# On Ray, each node's warm step server (placement/ray_warm.py) imports these libraries once;
# the code location itself (and its `resources`) is imported by each step, with its own
# settings, from its own checkout. MLflow's map is built by MLflow's function there.
RAY_PRELOAD = (*(m for m in TRAINING_PRELOAD if not m.startswith(("unified_assets", "resources"))),
               MLFLOW_MAP_WARMUP)
# Under scripts/dev.sh, run processes and the training forkserver fork from a server that
# imported the same libraries when the code server loaded this (unified_assets/local_warm.py).
local_warm.install(RAY_PRELOAD)
TRAINING_EXECUTOR_CONFIG = {
    **LOCAL_EXECUTOR_CONFIG, "start_method": {"forkserver": {"preload_modules": TRAINING_PRELOAD}},
}

# With the multiprocess executor (local, and the production stack), ingestion, labels and
# decisions run their steps in the run's own process: a forkserver and a process per step cost
# seconds (bench/first_champion.py: 2.6 s to start the forkserver, 1.2-2 s per step process)
# for steps that compute for a second or two, one after the other. Their pools still apply
# (Dagster's in-process executor claims pool slots too); a run process killed mid-step frees
# its slot through run monitoring (deploy/local/dagster.yaml).
LIGHT_EXECUTOR = dg.in_process_executor

SHARED_ASSETS = [landed_batch, batch_labels, training_set, approval, production_model,
                 batch_drift, live_performance, drift_report]


def candidate_assets(candidates: tuple[Candidate, ...]) -> list[dg.AssetsDefinition]:
    """Every declared candidate's model, evaluation and quality-report assets, and the
    challenger over them: nothing else lists candidates."""
    per_candidate = [a for c in candidates for a in (build_model_asset(c),
                                                     build_evaluation_asset(c),
                                                     build_quality_report_asset(c))]
    return [*per_candidate, build_challenger(candidates)]

# Run priority (the run queue dequeues higher first; a run's steps add it to their pool
# claims): a person's decision or a rollback goes ahead of retrains and ingestion.
DECISION_PRIORITY = {"dagster/priority": "10"}
# Runs the declarative automation sensor launches (batch_drift, drift_report, promotion)
# say why they started like every other run.
AUTOMATION_RUN_TAGS = started_because("automation",
                                      "declarative automation: an upstream asset updated")
# Evidently's reports (drift per batch, quality per evaluated candidate) are for people and
# cost seconds to tens of seconds each: their runs come from their own automation sensor at a
# lower run priority, so every batch is judged (batch_drift) and every promotion decided
# before the queue turns to the reports. No gate reads them; no lifecycle job waits for them.
# Their steps take report-pool slots (a core each, one core left to the lifecycle) and their
# runs count against the instance's `unified-ai/queue: reports` limit, below its run slots.
REPORT_ASSETS = dg.AssetSelection.tag(REPORT_TAG, "evidently")
REPORT_RUN_TAGS = {**AUTOMATION_RUN_TAGS, "dagster/priority": "-5", RUN_QUEUE_TAG: REPORT_QUEUE}

# A run a person launches (the UI's launchpad, `dagster job launch`) says so; every sensor,
# schedule and the CLI set their own trigger, which takes precedence over a job's tags.
MANUAL = started_because("manual")


# Ingestion, labels and decisions: light steps, one after the other, none on a GPU. Locally
# they run in the run's own process (`LIGHT_EXECUTOR`), elsewhere on the deployment's executor.
def light_jobs(executor_def: dg.ExecutorDefinition | None = None) -> tuple:
    """(ingest_batch, ingest_labels, approve_or_reject, rollback_production);
    `executor_def` None runs them on the definitions' executor."""
    # Drift is judged in the ingestion run itself: the evidence is in the catalog when the run
    # ends, with no automation tick (30 s) and no second run per landing between a batch and
    # the retrain it calls for.
    ingest = dg.define_asset_job(
        "ingest_batch", selection=[landed_batch, batch_drift], partitions_def=BATCHES,
        tags=MANUAL, executor_def=executor_def,
        description="Validate and curate landed batches (one partition or a range), then "
        "judge each passing batch's drift against the champion.",
    )
    labels = dg.define_asset_job(
        "ingest_labels", selection=[batch_labels, live_performance], partitions_def=BATCHES,
        tags=MANUAL, executor_def=executor_def,
        description="Match a batch's late labels to its rows and measure the champion on them.",
    )
    approve = dg.define_asset_job(
        "approve_or_reject",
        selection=[approval, production_model],
        config=approval_launchpad,  # the launchpad shows only the decision's fields
        tags={**DECISION_PRIORITY, **MANUAL}, executor_def=executor_def,
        description="Record a decision on the challenger (config: decision, version, approver, "
        "reason); an approval promotes in the same run.",
    )
    rollback = dg.define_asset_job(
        "rollback_production",
        selection=[production_model],
        tags={**DECISION_PRIORITY, **MANUAL}, executor_def=executor_def,
        config=rollback_launchpad,  # who, why, to what: no resources, no other steps' fields
        description="Move `champion` back to the previous good version (or rollback_to), with "
        "an incident record. Fill in by and reason.",
    )
    return ingest, labels, approve, rollback


# Their names, selections and tags for readers; build_definitions makes the ones it serves.
ingest_job, labels_job, approval_job, rollback_job = light_jobs()


def lifecycle_job_for(executor_def: dg.ExecutorDefinition | None = None):
    """The training job; `executor_def` None runs it on the definitions' executor."""
    return dg.define_asset_job(
        "train_evaluate_promote",
        selection=dg.AssetSelection.groups("training", "evaluation", "deployment") - REPORT_ASSETS,
        tags={RETRAIN_TAG: "train_evaluate_promote", **MANUAL},
        description="Build the training set, train every candidate, evaluate, select, promote "
        "(Evidently's quality reports follow from the report automation).",
        executor_def=executor_def,
    )


# Its name, selection and tags for readers; build_definitions makes the one it serves.
lifecycle_job = lifecycle_job_for()


def dataset_resource(settings: Settings) -> DatasetResource:
    """The landing zone: the local folder, or an S3 prefix read through dagster-aws."""
    if settings.landing_uri is None:
        return DatasetResource(spec_path=settings.dataset_spec,
                               landing_dir=str(settings.landing_dir))
    from dagster_aws.s3 import S3Resource

    from resources.dataset import S3DatasetResource

    # Credentials come from the standard AWS environment (never config); an S3-compatible
    # endpoint (MinIO, Ceph) from UNIFIED_AI_S3_ENDPOINT_URL when set.
    s3 = S3Resource(endpoint_url=dg.EnvVar("UNIFIED_AI_S3_ENDPOINT_URL")) if settings.s3_endpoint \
        else S3Resource()
    return S3DatasetResource(spec_path=settings.dataset_spec, landing_dir=str(settings.landing_dir),
                             landing_uri=settings.landing_uri, s3=s3,
                             cache_dir=str(settings.home / "landing-cache"))


def local_resources(settings: Settings) -> dict:
    return {
        "dataset": dataset_resource(settings),
        "store": ArtifactStore(root=str(settings.artifacts_dir)),
        "mlflow_registry": MlflowRegistry(tracking_uri=settings.mlflow_tracking_uri,
                                          artifact_location=settings.mlflow_artifact_location,
                                          ui_url=settings.mlflow_ui_url),
        "io_manager": dg.FilesystemIOManager(base_dir=str(settings.io_dir)),
        VALUES_IO_MANAGER: ParquetIOManager(root=str(settings.values_dir)),
        "decisions": DecisionStore(url=settings.decisions_url),
    }


def kubernetes_resources(settings: Settings) -> dict:
    from dagster_aws.s3 import S3PickleIOManager, S3Resource

    s3 = S3Resource(endpoint_url=dg.EnvVar("UNIFIED_AI_S3_ENDPOINT_URL"),
                    aws_access_key_id=dg.EnvVar("AWS_ACCESS_KEY_ID"),
                    aws_secret_access_key=dg.EnvVar("AWS_SECRET_ACCESS_KEY"))
    return {
        "dataset": dataset_resource(settings),
        "store": ArtifactStore(root=dg.EnvVar("UNIFIED_AI_ARTIFACT_ROOT"),
                               s3_endpoint_url=dg.EnvVar("UNIFIED_AI_S3_ENDPOINT_URL"),
                               aws_access_key_id=dg.EnvVar("AWS_ACCESS_KEY_ID"),
                               aws_secret_access_key=dg.EnvVar("AWS_SECRET_ACCESS_KEY")),
        "mlflow_registry": MlflowRegistry(tracking_uri=dg.EnvVar("MLFLOW_TRACKING_URI"),
                                          ui_url=settings.mlflow_ui_url),
        # Off sqlite there is no key file beside the store: the ledger key is a secret too.
        "decisions": DecisionStore(url=dg.EnvVar("UNIFIED_AI_DECISIONS_URL"),
                                   chain_key=dg.EnvVar("UNIFIED_AI_LEDGER_KEY")),
        "io_manager": S3PickleIOManager(s3_resource=s3, s3_bucket=dg.EnvVar("UNIFIED_AI_S3_BUCKET"),
                                        s3_prefix="io"),
        # Batches and labels as Parquet in s3://$UNIFIED_AI_S3_BUCKET/values.
        VALUES_IO_MANAGER: ParquetIOManager(
            s3_bucket=dg.EnvVar("UNIFIED_AI_S3_BUCKET"), root="values",
            s3_endpoint_url=dg.EnvVar("UNIFIED_AI_S3_ENDPOINT_URL"),
            aws_access_key_id=dg.EnvVar("AWS_ACCESS_KEY_ID"),
            aws_secret_access_key=dg.EnvVar("AWS_SECRET_ACCESS_KEY")),
    }


def executor_for(settings: Settings) -> dg.ExecutorDefinition:
    """The deployment's own executor, or the one UNIFIED_AI_EXECUTOR names (the production
    stack: the kubernetes resources with steps as local processes)."""
    if settings.executor == "k8s":
        from unified_assets.placement.manifests import k8s_executor_with_placement

        # Keeps `per_step_k8s_config` open to run config, where launches put the plan.
        return k8s_executor_with_placement(max_concurrent=8)
    if settings.executor == "ray":
        from unified_assets.placement.ray_executor import ray_executor_for

        # Every step a Ray job on RAY_ADDRESS, asking Ray for what its placement decided.
        return ray_executor_for(settings, preload=RAY_PRELOAD)
    return dg.multiprocess_executor.configured(LOCAL_EXECUTOR_CONFIG)


def build_pool_limits_sensor(kubernetes: bool, ray_address: str | None = None
                             ) -> dg.SensorDefinition:
    """Sizes the concurrency pools from the machine (or cluster and policy). Dagster OSS keeps
    per-pool limits only in the instance (dagster.yaml has just `default_limit`), and the code
    location has no instance at load; a sensor runs in the daemon against the real instance,
    the same under `dagster dev` and Helm, with no start script to forget, and re-applies the
    limits after an instance reset. A limit an operator changed by hand is left alone."""

    @dg.sensor(
        name="pool_limits",
        minimum_interval_seconds=300,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="Sets the light-pool, cpu-pool, gpu-pool and report-pool slots from this "
        "machine's cores and GPUs (Kubernetes: the cluster's GPUs and the policy's scalable node pools; Ray: "
        "the Ray cluster's CPU nodes and GPU pool).",
    )
    def pool_limits(context: dg.SensorEvaluationContext, policy: PolicyResource):
        from unified_assets.placement.probe import apply_pool_limits, machine_pool_slots

        try:
            wanted = machine_pool_slots(policy.policy.placement, kubernetes=kubernetes,
                                        ray_address=ray_address)
        except OSError as error:  # Ray's dashboard unreachable: keep the limits there are
            return dg.SkipReason(f"pool limits left as they are: the Ray cluster at "
                                 f"{ray_address} did not answer ({error})")
        source = "this machine"  # named in every note: which capacity the pools follow
        if ray_address is not None:
            from unified_assets.placement.ray_executor import dashboard_address

            source = f"the Ray cluster at {dashboard_address(ray_address)}"
        elif kubernetes:
            source = "the Kubernetes cluster and the policy"
        ours, notes = apply_pool_limits(context.instance, wanted,
                                        json.loads(context.cursor or "{}"))
        notes = [f"{note} (from {source})" for note in notes]
        for note in notes:
            context.log.info(note)
        summary = ", ".join(f"{pool} {slots}" for pool, slots in sorted(wanted.items()))
        return dg.SensorResult(cursor=json.dumps(ours, sort_keys=True),
                               skip_reason="; ".join(notes)
                               or f"pools as derived from {source}: {summary}")

    return pool_limits


def build_definitions(settings: Settings) -> dg.Definitions:
    # Fail the load (UI, `dagster definitions validate`) on a bad policy, naming the key.
    # The one place the policy file is chosen: UNIFIED_AI_POLICY, else the dataset spec's.
    policy_path, _ = policy_choice(settings)
    policy = load_policy(policy_path)
    if settings.deployment == "kubernetes" and not policy.approval.require_signature:
        # The image ships the demo policy (unsigned decisions allowed); production acts only
        # on signed decisions, so forgetting UNIFIED_AI_POLICY must not fail open.
        raise PolicyError(
            f"policy {policy_path or DEFAULT_POLICY_PATH}: approval.require_signature is "
            "false; a kubernetes deployment acts only on signed decisions (set UNIFIED_AI_POLICY "
            "to a policy with require_signature: true and each decider's public key)")
    resources = (kubernetes_resources if settings.deployment == "kubernetes"
                 else local_resources)(settings)
    resources["policy"] = PolicyResource(path=policy_path)
    resources["escalation"] = Escalation()
    resources[APPROVAL_INPUT] = approval_if_any
    # serving: RAY_ADDRESS's cluster, else a Ray instance on this machine started on demand
    resources["serving_target"] = ServingTarget(home=str(settings.home),
                                                ray_address=settings.ray_address)
    schedules = [request_audit_daily]  # serving: yesterday's requests, summarized at 00:15 UTC
    local = settings.executor == "multiprocess"
    training = lifecycle_job_for(dg.multiprocess_executor.configured(TRAINING_EXECUTOR_CONFIG)
                                 if local else None)
    ingest_job, labels_job, approval_job, rollback_job = light_jobs(LIGHT_EXECUTOR if local
                                                                    else None)
    if policy.drift.retrain_cron:
        schedules.append(dg.ScheduleDefinition(
            name="retrain_floor", job=training, cron_schedule=policy.drift.retrain_cron,
            default_status=dg.DefaultScheduleStatus.RUNNING,
            tags={TRIGGER_TAG: "schedule"},
            description="Freshness floor from the policy's drift.retrain_cron.",
        ))
    candidates = resolve_candidates(settings.candidates)
    return dg.Definitions(
        assets=[*SHARED_ASSETS, *candidate_assets(candidates), support_intent_model, serving,
                *BACKLOG_ASSETS, request_audit],
        schedules=schedules,
        jobs=[ingest_job, labels_job, training, approval_job, rollback_job,
              deploy_serving_job, resolve_support_case_job, support_backlog_job,
              request_audit_job],
        sensors=[
            build_landing_sensor(ingest_job),
            build_labels_sensor(labels_job),
            build_live_sensor(training, rollback_job),
            build_approval_sensor(approval_job),
            build_drift_sensor(training),
            run_failure_incidents,
            build_serving_sensor(deploy_serving_job),
            build_scaling_sensor(),
            build_backlog_sensor(support_backlog_job),
            build_pool_limits_sensor(
                settings.executor == "k8s",
                (settings.ray_address or "") if settings.executor == "ray" else None),
            dg.AutomationConditionSensorDefinition(
                "lifecycle_automation", target=dg.AssetSelection.all() - REPORT_ASSETS,
                default_status=dg.DefaultSensorStatus.RUNNING,
                run_tags=AUTOMATION_RUN_TAGS,
            ),
            dg.AutomationConditionSensorDefinition(
                "report_automation", target=REPORT_ASSETS,
                default_status=dg.DefaultSensorStatus.RUNNING,
                run_tags=REPORT_RUN_TAGS,
            ),
        ],
        resources=resources,
        executor=executor_for(settings),
    )


@dg.definitions
def defs() -> dg.Definitions:
    """The code location, built when Dagster loads it (not at import): the environment is read
    and the policy loaded then, so importing this module has no side effects."""
    return build_definitions(load_settings())
