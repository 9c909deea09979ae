import json
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest

from unified_assets.assets.models import build_model_asset
from unified_assets.candidates import SHIPPED
from unified_assets.definitions import INSTANCE_PRELOAD, build_definitions
from unified_assets.definitions import defs as load_defs
from unified_assets.policy import PolicyError
from unified_assets.settings import Settings, load_settings

ROOT = Path(__file__).resolve().parents[2]


def test_definitions_load_and_every_asset_is_described():
    defs = load_defs()
    dg.Definitions.validate_loadable(defs)
    graph = defs.resolve_asset_graph()
    keys = {k.to_user_string() for k in graph.get_all_asset_keys()}
    assert keys == {
        "landed_batch", "training_set", "model_sklearn", "model_torch",
        "evaluation_sklearn", "evaluation_torch", "quality_report_sklearn",
        "quality_report_torch", "challenger", "approval",
        "production_model", "batch_drift", "batch_labels", "live_performance", "drift_report",
        "support_intent_model", "serving", "support_backlog", "backlog_classified",
        "backlog_retrieved", "backlog_explained", "backlog_fraud_checked", "backlog_decided",
        "request_audit",
    }
    groups = {}
    for key in graph.get_all_asset_keys():
        spec = graph.get(key)
        assert spec.description and len(spec.description) > 40, key
        assert spec.owners == ["team:ml-platform"], key
        kinds = {t.split("/")[-1] for t in spec.tags if t.startswith("dagster/kind/")}
        assert kinds, key
        groups[key.to_user_string()] = spec.group_name
    assert groups["landed_batch"] == "data"
    assert groups["model_torch"] == "training"
    assert groups["evaluation_torch"] == "evaluation"
    assert groups["challenger"] == "evaluation"
    assert groups["production_model"] == "deployment"
    assert groups["serving"] == "serving"  # its own group: a lifecycle run never starts Ray
    assert groups["backlog_explained"] == groups["request_audit"] == "serving"


def test_candidates_declare_their_compute_profiles():
    torch_node, sklearn_node = (build_model_asset(SHIPPED[n]).op for n in ("torch", "sklearn"))
    assert torch_node.tags["unified-ai/compute"] == "gpu"
    assert torch_node.pool == "gpu-pool"
    assert sklearn_node.tags["unified-ai/compute"] == "cpu"
    k8s = torch_node.tags["dagster-k8s/config"]
    k8s = json.loads(k8s) if isinstance(k8s, str) else k8s
    assert k8s["container_config"]["resources"]["limits"]["nvidia.com/gpu"] == "1"


def test_local_executor_limits_gpu_steps_to_the_gpu_slots(tmp_path):
    local = build_definitions(Settings("local", tmp_path, None))
    assert local.executor.name == "multiprocess"
    # The executor the definitions were built with, as a run configures it (not the module's
    # constant): every job runs on it.
    config = local.executor.apply_config_mapping({}).value["config"]
    assert {"key": "unified-ai/compute", "value": "gpu", "limit": 1} in config[
        "tag_concurrency_limits"
    ]
    assert "forkserver" in config["start_method"]
    for job in ("deploy_serving", "resolve_support_case"):
        assert local.resolve_job_def(job).executor_def is local.executor, job


LIGHT_JOBS = ("ingest_batch", "ingest_labels", "approve_or_reject", "rollback_production")


def test_light_local_jobs_run_their_steps_in_the_run_process(tmp_path):
    """Found by bench/first_champion.py: an ingestion run of 6 batches spent 2.6 s starting its
    forkserver (Python, Dagster, the code location) and 1.2-2 s per step process for steps
    that compute for 1-3 s, all on the first champion's path. Ingestion, labels and decisions
    have no GPU step and run their steps one after the other: locally they run in the run's
    own process (still in their pools); training keeps a process per step."""
    local = build_definitions(Settings("local", tmp_path, None))
    for job in LIGHT_JOBS:
        assert local.resolve_job_def(job).executor_def.name == "in_process", job
    assert local.resolve_job_def("train_evaluate_promote").executor_def.name == "multiprocess"
    # Elsewhere every job keeps the deployment's executor (a pod or Ray job per step).
    ray = build_definitions(Settings("local", tmp_path, None, executor_override="ray"))
    for job in LIGHT_JOBS:
        assert ray.resolve_job_def(job).executor_def is ray.executor, job


def local_ingest_job() -> dg.JobDefinition:
    """The local code location's ingestion job, as a run worker loads it (for `reconstructable`)."""
    return load_defs().resolve_job_def("ingest_batch")


def test_a_local_ingestion_run_has_no_step_processes(settings, monkeypatch):
    from unified_assets.ml.generator import write_batches

    monkeypatch.setenv("UNIFIED_AI_HOME", str(settings.home))
    write_batches(settings.landing_dir, batches=1, rows=500)
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("batches", ["batch-00000"])
        with dg.execute_job(dg.reconstructable(local_ingest_job), instance=instance,
                            tags={"dagster/partition": "batch-00000"}) as result:
            assert result.success, [e.message for e in result.all_events if e.is_failure]
            kinds = [e.event_type for e in result.all_events]
            steps = {e.step_key for e in result.all_events if e.is_step_success}
    assert steps == {"landed_batch", "batch_drift"}
    assert dg.DagsterEventType.STEP_WORKER_STARTING not in kinds, "a step got its own process"


def _executor_config(job: dg.JobDefinition) -> dict:
    return job.executor_def.apply_config_mapping({}).value["config"]


def test_the_training_runs_forkserver_imports_the_ml_libraries_once_for_all_its_steps(tmp_path):
    """Found by bench/first_champion.py: every step of a training run imported MLflow, torch
    and scikit-learn again (2-2.5 s each here). The training job's forkserver imports them
    once, with the code location; the other jobs' steps never pay for them."""
    local = build_definitions(Settings("local", tmp_path, None))
    training = _executor_config(local.resolve_job_def("train_evaluate_promote"))
    preload = training["start_method"]["forkserver"]["preload_modules"]
    assert preload[0] == "unified_assets.definitions"
    assert {"mlflow", "torch", "sklearn.ensemble"} <= set(preload)
    # Otherwise the same executor: GPU slots and concurrency as every local run.
    default = local.executor.apply_config_mapping({}).value["config"]
    assert {k: v for k, v in training.items() if k != "start_method"} == {
        k: v for k, v in default.items() if k != "start_method"}
    other = _executor_config(local.resolve_job_def("deploy_serving"))["start_method"]["forkserver"]
    assert "torch" not in other.get("preload_modules", [])
    dg.Definitions.validate_loadable(local)


# The instance reference as a run worker hands it to its steps (made in another process).
INSTANCE_REF = """
import shutil, sys
from pathlib import Path
import dagster as dg
home = Path(sys.argv[1])
shutil.copy("deploy/local/dagster.yaml", home / "dagster.yaml")
print(dg.serialize_value(dg.DagsterInstance.from_config(str(home)).get_ref()))
"""
# A forkserver's child: the preloaded modules, then the step's own instance.
INSTANCE_CHECK = """
import importlib, sys
from unified_assets.definitions import INSTANCE_PRELOAD
for name in ["unified_assets.definitions", *INSTANCE_PRELOAD]:
    importlib.import_module(name)
import dagster as dg
ref = dg.deserialize_value(sys.stdin.read())
before = set(sys.modules)
with dg.DagsterInstance.from_ref(ref) as instance:
    instance.get_runs(limit=1)
print(sorted(m for m in set(sys.modules) - before
             if m.startswith(("dagster", "alembic", "sqlalchemy", "upath", "unified_assets"))))
"""


def test_local_step_processes_open_the_instance_with_nothing_left_to_import(tmp_path):
    """Found by profiling a chain of trivial steps: each step process spent 0.5-0.7 s between
    being forked and STEP_WORKER_STARTED, most of it importing Dagster's storage modules (431
    modules: SQLite storages, alembic, SQLAlchemy dialects) to open the instance. The local
    forkservers preload them once per run: a step process then imports none of them."""
    home = tmp_path / "dagster_home"
    home.mkdir()
    ref = subprocess.run([sys.executable, "-c", INSTANCE_REF, str(home)], cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout.strip().splitlines()
    out = subprocess.run([sys.executable, "-c", INSTANCE_CHECK], cwd=ROOT, input=ref[-1],
                         capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "[]", out
    local = build_definitions(Settings("local", tmp_path, None))
    for job in ("train_evaluate_promote", "deploy_serving"):
        preload = _executor_config(local.resolve_job_def(job))["start_method"]["forkserver"][
            "preload_modules"]
        assert preload[0] == "unified_assets.definitions", job
        assert set(INSTANCE_PRELOAD) <= set(preload), job


# A step forked from a forkserver with the local preload reports how many objects it finds
# frozen (never walked by its collections) and how many its collections would walk.
FORKSERVER_CHILD = """
import gc, json, multiprocessing, sys


def step(queue):
    queue.put({"frozen": gc.get_freeze_count(), "walked": len(gc.get_objects())})


if __name__ == "__main__":
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(json.loads(sys.argv[1]))
    queue = context.Queue()
    process = context.Process(target=step, args=(queue,))
    process.start()
    print(json.dumps(queue.get(timeout=120)))
    process.join(60)
"""


def test_steps_forked_from_a_local_forkserver_leave_its_preload_to_the_permanent_generation(
        tmp_path):
    """A step's full collection would walk the forkserver's preload (Dagster, the code
    location; torch and MLflow for training) and make those pages private to the step
    (bench/fork_gc.py: 0.44 s and 176 MB with the training preload). Each local forkserver
    freezes its preload before it forks a step."""
    local = build_definitions(Settings("local", tmp_path, None))
    preloads = {job: _executor_config(local.resolve_job_def(job))["start_method"][
        "forkserver"]["preload_modules"] for job in ("train_evaluate_promote", "deploy_serving")}
    assert all(preload[-1] == "unified_assets.forkserver_gc" for preload in preloads.values())
    (tmp_path / "driver.py").write_text(FORKSERVER_CHILD)
    out = subprocess.run([sys.executable, str(tmp_path / "driver.py"),
                          json.dumps(preloads["deploy_serving"])], cwd=ROOT, capture_output=True,
                         text=True, check=True, timeout=300).stdout
    child = json.loads(out.strip().splitlines()[-1])
    # The code location and Dagster: hundreds of thousands of objects, all frozen.
    assert child["frozen"] > 100_000 > 10 * child["walked"], child


# A training step forked from its forkserver: the preload, then the step's own MLflow store.
MLFLOW_STORE_CHECK = """
import importlib, sys
from unified_assets.definitions import TRAINING_PRELOAD
for name in TRAINING_PRELOAD:
    importlib.import_module(name)
from resources.mlflow_registry import MlflowRegistry
registry = MlflowRegistry(tracking_uri="sqlite:///" + sys.argv[1])
before = set(sys.modules)
registry.alias_version("model")
registry.version_exists("model", "1")
# Left out: two small modules MLflow's schema check loads from its migration files each time
# (named after their revision, e.g. mlflow.store.db.trace_analytics_schema_75868b020152).
print(sorted(m for m in set(sys.modules) - before if m.startswith(("mlflow", "sqlalchemy", "alembic"))
             and not m.startswith("mlflow.store.db.trace_analytics_")))
"""


def test_training_steps_open_the_mlflow_store_with_nothing_left_to_import(tmp_path):
    """Found by sampling the first champion's processes (py-spy): every training step that
    talks to the registry (models, evaluations, challenger, promotion) imported MLflow's
    SQLAlchemy stores after its fork, 0.5-1 s each, one after another along the critical path.
    The training forkserver imports them once; a step then opens the store in 0.1 s."""
    store = tmp_path / "mlflow.db"
    # The store exists before training starts (scripts/dev.sh, or the first run's migration).
    subprocess.run([sys.executable, "-c", "import sys; from mlflow import MlflowClient\n"
                    "uri = 'sqlite:///' + sys.argv[1]; MlflowClient(uri, uri).search_experiments()",
                    str(store)], check=True, capture_output=True)
    out = subprocess.run([sys.executable, "-c", MLFLOW_STORE_CHECK, str(store)], cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "[]", out


def test_other_deployments_train_on_their_own_executor(tmp_path):
    ray = build_definitions(Settings("local", tmp_path, None, executor_override="ray"))
    assert ray.resolve_job_def("train_evaluate_promote").executor_def is ray.executor


def _signed_policy(folder):
    """The shipped rules with signatures required and a key for every decider."""
    from tests.policies import write_policy
    from unified_assets.services.identity import new_key_pair

    people = ["alice", "bob", "risk-officer", "ops"]
    keys = {person: new_key_pair()[1] for person in people}
    return str(write_policy(folder, {"approval": {"require_signature": True, "keys": keys}}))


def test_kubernetes_deployment_uses_the_k8s_job_executor(tmp_path):
    k8s = build_definitions(Settings("kubernetes", tmp_path, None,
                                     policy_path=_signed_policy(tmp_path)))
    assert k8s.executor.name == "k8s"
    dg.Definitions.validate_loadable(k8s)


def test_kubernetes_refuses_a_policy_that_allows_unsigned_decisions(tmp_path):
    with pytest.raises(PolicyError, match="require_signature is false; a kubernetes deployment"):
        build_definitions(Settings("kubernetes", tmp_path, None))


def test_unknown_deployment_is_an_error():
    with pytest.raises(ValueError, match="UNIFIED_AI_DEPLOYMENT='cloud' is not a deployment"):
        load_settings({"UNIFIED_AI_DEPLOYMENT": "cloud"})


@pytest.mark.parametrize("deployment", ["local", "ray"])
def test_code_location_import_is_lean(tmp_path, deployment):
    code = (
        "import sys, unified_assets.definitions\n"
        "assert unified_assets.definitions.defs().executor.name == "
        f"{'ray' if deployment == 'ray' else 'multiprocess'!r}\n"
        "unified_assets.definitions.defs()\n"  # loading builds them: still lean
        "print(sorted(m for m in ('torch','mlflow','sklearn','evidently','pandas','ray') "
        "if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={"UNIFIED_AI_HOME": str(tmp_path), "PATH": "",
                              "UNIFIED_AI_DEPLOYMENT": deployment,
                              "RAY_ADDRESS": "http://127.0.0.1:8265"}, cwd=ROOT)
    assert out.stdout.strip() == "[]"


def test_dagster_cli_validates_the_workspace(tmp_path):
    dagster = Path(sys.executable).with_name("dagster")
    out = subprocess.run(
        [str(dagster), "definitions", "validate", "-w", "workspace.yaml"],
        capture_output=True, text=True, cwd=ROOT,
        env={"UNIFIED_AI_HOME": str(tmp_path), "DAGSTER_HOME": str(tmp_path), "PATH": ""},
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert "Validation successful" in out.stdout + out.stderr
