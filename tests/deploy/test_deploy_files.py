"""The files under deploy/ agree with the code and are accepted by Dagster.

- every YAML file parses;
- every `dg.EnvVar("X")` in unified_assets/definitions.py reaches the pods: the Helm user
  deployment (env or envSecrets) and the chart-less K8sRunLauncher (env_config_maps / env_secrets);
- deploy/local/dagster.yaml makes a real DagsterInstance; deploy/dagster.yaml passes Dagster's
  instance schema and each configurable class's own schema, without connecting to Postgres or
  Kubernetes;
- the Dockerfile and the GPU node pool match pyproject.toml and unified_assets/compute.py.
"""

from __future__ import annotations

import re
import shutil
import tomllib
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
import yaml
from dagster._config import process_config
from dagster._core.errors import DagsterInvalidConfigError
from dagster._core.instance.config import ConcurrencyConfig, dagster_instance_config
from dagster._core.storage.config import pg_config
from dagster._serdes.config_class import ConfigurableClassData, class_from_code_pointer
from packaging.specifiers import SpecifierSet
from packaging.version import Version

from unified_assets.compute import COMPUTE_TAG, GPU_RESOURCE, GPU_TAINT_KEY, GPU_TRAINING
from unified_assets.settings import DEPLOYMENT_ENV, HOME_ENV, load_settings

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
DEFINITIONS = ROOT / "unified_assets" / "definitions.py"
VALUES = DEPLOY / "helm" / "values.yaml"
K8S_INSTANCE = DEPLOY / "dagster.yaml"
LOCAL_INSTANCE = DEPLOY / "local" / "dagster.yaml"
DOCKERFILE = DEPLOY / "Dockerfile"
EKSCTL = DEPLOY / "gpu" / "eksctl-gpu-nodegroup.yaml"
GPU_README = DEPLOY / "gpu" / "README.md"
USER_DEPLOYMENT = "unified-ai"

ENV_VAR_CALL = re.compile(r"""\bEnvVar\(\s*["']([A-Za-z_][A-Za-z0-9_]*)["']\s*\)""")
# Where the instance config says `{env: NAME}`.
INSTANCE_ENV_REF = re.compile(r"^\s*env:\s*([A-Za-z_][A-Za-z0-9_]*)\s*$", re.MULTILINE)
SECRET_LIKE = re.compile(r"SECRET|PASSWORD|TOKEN|ACCESS_KEY")

EXPECTED_YAML = {
    "dagster.yaml",
    "local/dagster.yaml",
    "helm/values.yaml",
    "gpu/eksctl-gpu-nodegroup.yaml",
    "k8s/unified-ai-aws.secret.example.yaml",
    "k8s/unified-ai-home.pvc.yaml",
    "k8s/standalone-env.yaml",
}


# ---------------------------------------------------------------------------------------------
# helpers


def yaml_files() -> list[Path]:
    return sorted(p for p in DEPLOY.rglob("*") if p.suffix in {".yaml", ".yml"} and p.is_file())


def load_docs(path: Path) -> list[Any]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def load_one(path: Path) -> dict[str, Any]:
    docs = load_docs(path)
    assert len(docs) == 1, f"{path} should hold exactly one YAML document"
    assert isinstance(docs[0], dict)
    return docs[0]


def manifests(kind: str) -> dict[str, dict[str, Any]]:
    """Kubernetes objects of one kind found anywhere under deploy/, by metadata.name."""
    found: dict[str, dict[str, Any]] = {}
    for path in yaml_files():
        for doc in load_docs(path):
            if isinstance(doc, dict) and doc.get("kind") == kind:
                found[doc["metadata"]["name"]] = doc
    return found


def secret_keys(name: str) -> set[str]:
    secrets = manifests("Secret")
    assert name in secrets, f"no Secret manifest named {name!r} under deploy/ (referenced by config)"
    secret = secrets[name]
    return set(secret.get("stringData") or {}) | set(secret.get("data") or {})


def configmap_data(name: str) -> dict[str, str]:
    maps = manifests("ConfigMap")
    assert name in maps, f"no ConfigMap manifest named {name!r} under deploy/ (referenced by config)"
    return dict(maps[name].get("data") or {})


def definitions_env_vars() -> set[str]:
    return set(ENV_VAR_CALL.findall(DEFINITIONS.read_text()))


def user_deployment() -> dict[str, Any]:
    deployments = load_one(VALUES)["dagster-user-deployments"]["deployments"]
    matching = [d for d in deployments if d["name"] == USER_DEPLOYMENT]
    assert len(matching) == 1, f"expected one user deployment named {USER_DEPLOYMENT!r}"
    return matching[0]


def plain_env(deployment: dict[str, Any]) -> dict[str, str]:
    env = deployment.get("env") or []
    # The chart accepts a list of EnvVar objects (rendered into the pod) or a name->value map.
    if isinstance(env, dict):
        return {str(k): str(v) for k, v in env.items()}
    return {item["name"]: str(item.get("value", "")) for item in env}


def pyproject() -> dict[str, Any]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def class_of(section: dict[str, Any]) -> type:
    """Resolve a `{module, class}` section the way the instance does (old `dagster.core.*`
    module names are mapped to `dagster._core.*` by ConfigurableClassData)."""
    data = ConfigurableClassData(section["module"], section["class"], yaml.safe_dump(section.get("config")))
    return class_from_code_pointer(data.module_name, data.class_name)


def validated_instance_config(path: Path, home: Path) -> dict[str, Any]:
    """Dagster's own loader for $DAGSTER_HOME/dagster.yaml: top-level schema and concurrency rules."""
    home.mkdir(parents=True, exist_ok=True)
    shutil.copy(path, home / "dagster.yaml")
    config, custom_instance_class = dagster_instance_config(str(home))
    assert custom_instance_class is None
    return dict(config)


# ---------------------------------------------------------------------------------------------
# (a) every YAML file parses


def test_expected_deploy_yaml_files_exist():
    present = {p.relative_to(DEPLOY).as_posix() for p in yaml_files()}
    assert present >= EXPECTED_YAML, f"missing: {sorted(EXPECTED_YAML - present)}"


@pytest.mark.parametrize("path", yaml_files(), ids=lambda p: p.relative_to(DEPLOY).as_posix())
def test_yaml_file_parses(path: Path):
    docs = load_docs(path)
    assert docs, f"{path} is empty"
    for doc in docs:
        assert isinstance(doc, dict), f"{path}: each document should be a mapping, got {type(doc)}"


# ---------------------------------------------------------------------------------------------
# (b) every dg.EnvVar of definitions.py is provided


def test_env_var_regex_sees_every_envvar_in_definitions():
    text = DEFINITIONS.read_text()
    names = definitions_env_vars()
    assert names, "no dg.EnvVar(...) found in definitions.py: regex or file changed"
    # A form the regex misses (EnvVar(name), EnvVar.int(...)) would silently escape the checks below.
    assert len(ENV_VAR_CALL.findall(text)) == len(re.findall(r"\bEnvVar\b", text)), (
        "definitions.py uses EnvVar in a form this test cannot read; extend ENV_VAR_CALL"
    )
    assert all(re.fullmatch(r"[A-Z][A-Z0-9_]*", n) for n in names), names


def test_helm_user_deployment_provides_every_envvar():
    deployment = user_deployment()
    provided = set(plain_env(deployment))
    for ref in deployment.get("envSecrets") or []:
        provided |= secret_keys(ref["name"])
    missing = definitions_env_vars() - provided
    assert not missing, f"dg.EnvVar names not set for user deployment {USER_DEPLOYMENT!r}: {sorted(missing)}"


def test_helm_credentials_come_from_a_secret_not_plain_env():
    deployment = user_deployment()
    leaked = {name for name in plain_env(deployment) if SECRET_LIKE.search(name)}
    assert not leaked, f"credentials in plain env of the Helm values: {sorted(leaked)}"
    secret_names = [ref["name"] for ref in deployment.get("envSecrets") or []]
    assert secret_names, "user deployment has no envSecrets"
    from_secrets = set().union(*(secret_keys(n) for n in secret_names))
    assert {n for n in definitions_env_vars() if SECRET_LIKE.search(n)} <= from_secrets


def test_helm_plain_env_values_are_set():
    env = plain_env(user_deployment())
    empty = sorted(n for n in definitions_env_vars() & set(env) if not env[n].strip())
    assert not empty, f"empty values (an empty EnvVar is not 'unset'): {empty}"


def test_helm_user_deployment_runs_the_kubernetes_code_location():
    deployment = user_deployment()
    env = plain_env(deployment)
    assert env.get(DEPLOYMENT_ENV) == "kubernetes"
    assert load_settings({DEPLOYMENT_ENV: env[DEPLOYMENT_ENV]}).deployment == "kubernetes"
    module = pyproject()["tool"]["dagster"]["module_name"]
    args = deployment["dagsterApiGrpcArgs"]
    assert args[args.index("-m") + 1] == module
    assert deployment["port"] == 3030
    assert deployment["includeConfigInLaunchedRuns"]["enabled"] is True
    # The landing zone under UNIFIED_AI_HOME is shared by code server and run pods: a RWX claim.
    mounts = {m["name"]: m["mountPath"] for m in deployment["volumeMounts"]}
    claims = {v["name"]: v["persistentVolumeClaim"]["claimName"] for v in deployment["volumes"]}
    home_volumes = [name for name, path in mounts.items() if path == env[HOME_ENV]]
    assert home_volumes, f"nothing mounted at {HOME_ENV}={env[HOME_ENV]}"
    pvc = manifests("PersistentVolumeClaim")[claims[home_volumes[0]]]
    assert "ReadWriteMany" in pvc["spec"]["accessModes"]


def test_helm_chart_components():
    values = load_one(VALUES)
    assert values["dagster-user-deployments"]["enabled"] is True
    assert values["runLauncher"]["type"] == "K8sRunLauncher"
    assert values["postgresql"]["enabled"] is True
    daemon = values["dagsterDaemon"]
    assert daemon["enabled"] is True
    coordinator = daemon["runCoordinator"]
    assert coordinator["enabled"] is True
    assert coordinator["type"] == "QueuedRunCoordinator"
    limits = coordinator["config"]["queuedRunCoordinator"]["tagConcurrencyLimits"]
    assert {"key": COMPUTE_TAG, "value": "gpu", "limit": 1} in limits
    # A concurrency block added through additionalInstanceConfig next to these run-queue
    # limits makes the daemon refuse the instance config (dagster-io/dagster#31086).
    assert "concurrency" not in (values.get("additionalInstanceConfig") or {})


def test_standalone_launcher_provides_every_env_var():
    launcher = load_one(K8S_INSTANCE)["run_launcher"]["config"]
    provided: dict[str, str | None] = {}
    for name in launcher.get("env_config_maps") or []:
        provided.update(configmap_data(name))
    for name in launcher.get("env_secrets") or []:
        provided.update(dict.fromkeys(secret_keys(name)))
    if launcher.get("postgres_password_secret"):
        provided["DAGSTER_PG_PASSWORD"] = None  # injected by the K8sRunLauncher from that Secret
    instance_refs = set(INSTANCE_ENV_REF.findall(K8S_INSTANCE.read_text()))
    assert instance_refs, "deploy/dagster.yaml reads no env vars: the `env:` regex or the file changed"
    required = definitions_env_vars() | instance_refs | {DEPLOYMENT_ENV}
    missing = required - set(provided)
    assert not missing, f"run pods launched by deploy/dagster.yaml would lack: {sorted(missing)}"
    assert provided[DEPLOYMENT_ENV] == "kubernetes"


def test_standalone_and_helm_share_names():
    launcher = load_one(K8S_INSTANCE)["run_launcher"]["config"]
    helm_secrets = {ref["name"] for ref in user_deployment()["envSecrets"]}
    assert helm_secrets <= set(launcher["env_secrets"])
    helm_home = plain_env(user_deployment())[HOME_ENV]
    assert configmap_data("unified-ai-env")[HOME_ENV] == helm_home
    assert {m["mountPath"] for m in launcher["volume_mounts"]} == {helm_home}


# ---------------------------------------------------------------------------------------------
# (c) both instance configs are accepted by Dagster


def test_local_instance_config_makes_an_instance(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(LOCAL_INSTANCE, home / "dagster.yaml")
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    instance = dg.DagsterInstance.get()
    try:
        assert Path(instance.root_directory).resolve() == home.resolve()
        assert type(instance.run_storage).__name__.startswith("Sqlite")
        # Dagster's SQLite event log keeping its engines (unified_assets/instance_event_log.py).
        assert type(instance.event_log_storage).__name__ == "ReusingSqliteEventLogStorage"
        assert instance.get_settings("telemetry") == {"enabled": False}
        assert type(instance.run_coordinator).__name__ == "QueuedRunCoordinator"
        # A queued run starts within a second, as in production (Dagster's default: 5 s).
        assert instance.run_coordinator.dequeue_interval_seconds == 1
        # Sensors tick one after the other (Dagster's default): two sensors that may ask for a
        # retrain (drift, live performance) each see the other's queued run and fold into it,
        # and one tick's decisions are submitted in order. Threads would race both.
        assert instance.get_settings("sensors") == {}
        # A light run's steps run in its own process: a run process killed mid-step (out of
        # memory) records no step failure, so its pool slot is freed after the run ends.
        assert instance.run_monitoring_enabled
        assert instance.run_monitoring_settings["free_slots_after_run_end_seconds"] == 60
        assert instance.run_coordinator.dequeue_use_threads
        concurrency = instance.get_concurrency_config()
        assert concurrency.run_queue_config is not None
        assert concurrency.run_queue_config.max_concurrent_runs == 4
        assert concurrency.pool_config.default_pool_limit == 1
        # The pool the GPU profiles use gets 1 slot with no further setup.
        assert GPU_TRAINING.pool == "gpu-pool"
        assert instance.event_log_storage.supports_global_concurrency_limits
        info = instance.event_log_storage.get_concurrency_info(GPU_TRAINING.pool)
        assert info.limit == 1
        # SQLite storage is created under DAGSTER_HOME, nowhere else.
        assert (home / "history" / "runs.db").is_file()
    finally:
        instance.dispose()


def test_instance_loader_rejects_a_bad_config(tmp_path: Path):
    """The loader used below does validate: an unknown key and a run_queue limit next to a
    concurrency block (which Dagster forbids) are both refused."""
    bad = tmp_path / "bad.yaml"
    bad.write_text(LOCAL_INSTANCE.read_text() + "\nnot_a_dagster_key: 1\n")
    with pytest.raises(DagsterInvalidConfigError):
        validated_instance_config(bad, tmp_path / "a")
    bad.write_text(LOCAL_INSTANCE.read_text() + "\nrun_queue:\n  max_concurrent_runs: 4\n")
    with pytest.raises(DagsterInvalidConfigError):
        validated_instance_config(bad, tmp_path / "b")


def test_kubernetes_instance_config_passes_dagster_schema(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    config = validated_instance_config(K8S_INSTANCE, tmp_path / "dagster_home")

    # Postgres storage from env vars: resolves once the variables exist; no connection is made.
    refs = set(INSTANCE_ENV_REF.findall(K8S_INSTANCE.read_text()))
    assert {"DAGSTER_PG_USERNAME", "DAGSTER_PG_PASSWORD", "DAGSTER_PG_HOST", "DAGSTER_PG_DB"} <= refs
    for name in refs:
        monkeypatch.setenv(name, "5432" if name.endswith("_PORT") else f"value-of-{name.lower()}")
    storage = process_config(pg_config(), config["storage"]["postgres"])
    assert storage.success, storage.errors
    assert storage.value["postgres_db"]["port"] == 5432
    assert storage.value["postgres_db"]["password"] == "value-of-dagster_pg_password"

    # Each configurable class: importable, and its config passes the class's own schema.
    expected = {
        "run_launcher": "K8sRunLauncher",
        "run_coordinator": "QueuedRunCoordinator",
        "scheduler": "DagsterDaemonScheduler",
        "compute_logs": "NoOpComputeLogManager",
    }
    processed: dict[str, dict[str, Any]] = {}
    for section, class_name in expected.items():
        klass = class_of(config[section])
        assert klass.__name__ == class_name
        result = process_config(klass.config_type(), config[section].get("config") or {})
        assert result.success, f"{section}: {result.errors}"
        processed[section] = result.value

    launcher = processed["run_launcher"]
    assert launcher["instance_config_map"] == "dagster-instance"
    assert launcher["load_incluster_config"] is True
    assert launcher["env_secrets"] == ["unified-ai-aws", "unified-ai-decisions"]

    # What the instance would compute from run_coordinator + concurrency, built the same way.
    section = config["run_coordinator"]
    coordinator = class_of(section).from_config_value(
        ConfigurableClassData(section["module"], section["class"], yaml.safe_dump(section.get("config"))),
        processed["run_coordinator"],
    )
    concurrency = ConcurrencyConfig.from_concurrency_settings(
        config["concurrency"], coordinator.get_run_queue_config()
    )
    assert concurrency.pool_config.default_pool_limit == 1
    run_queue = concurrency.run_queue_config
    assert run_queue is not None
    assert run_queue.max_concurrent_runs == 10
    assert {"key": COMPUTE_TAG, "value": "gpu", "limit": 1} in run_queue.tag_concurrency_limits
    assert config["telemetry"] == {"enabled": False}


# ---------------------------------------------------------------------------------------------
# image and GPU pool against the code


def test_dockerfile_matches_project():
    text = DOCKERFILE.read_text()
    assert re.search(r"^FROM python:3\.11-slim\s*$", text, re.MULTILINE)
    assert re.search(r"^WORKDIR /opt/unified-ai\s*$", text, re.MULTILINE)
    assert re.search(r"^EXPOSE 3030\s*$", text, re.MULTILINE)
    assert re.search(rf"^ENV {DEPLOYMENT_ENV}=kubernetes\b", text, re.MULTILINE)
    torch_version = re.search(r"^ARG TORCH_VERSION=(\S+)\s*$", text, re.MULTILINE).group(1)
    torch_index = re.search(r"^ARG TORCH_INDEX_URL=(\S+)\s*$", text, re.MULTILINE).group(1)
    assert torch_index.endswith("/whl/cpu")
    torch_req = next(d for d in pyproject()["project"]["dependencies"] if d.startswith("torch"))
    assert Version(torch_version) in SpecifierSet(torch_req.removeprefix("torch")), torch_req
    # torch from the PyTorch index first, then the project, so pip keeps the CPU wheel.
    torch_step = text.index('"torch==${TORCH_VERSION}"')
    project_step = text.index('RUN pip install ".${EXTRAS:+[${EXTRAS}]}"')
    assert torch_step < project_step
    # The extras the image may take (deploy/README: EXTRAS=ray for KubeRay) are the project's.
    assert re.search(r'^ARG EXTRAS=""\s*$', text, re.MULTILINE)
    assert "ray" in pyproject()["project"]["optional-dependencies"]
    for package in pyproject()["tool"]["setuptools"]["packages"]["find"]["include"]:
        name = package.rstrip("*")
        assert re.search(rf"^COPY {name} \./{name}\s*$", text, re.MULTILINE), f"{name} not copied"
    assert pyproject()["tool"]["dagster"]["module_name"] in text
    assert not re.search(r"^ENTRYPOINT", text, re.MULTILINE), "the chart passes the command as args"


def test_eks_gpu_node_group_matches_gpu_profile():
    config = load_one(EKSCTL)
    assert config["kind"] == "ClusterConfig"
    group = next(g for g in config["managedNodeGroups"] if g["name"] == "gpu")
    pod = GPU_TRAINING.k8s_config()
    for key, value in pod["pod_spec_config"]["node_selector"].items():
        assert group["labels"].get(key) == value
    taints = {(t["key"], t["effect"]) for t in group["taints"]}
    for toleration in pod["pod_spec_config"]["tolerations"]:
        assert toleration["key"] == GPU_TAINT_KEY
        assert (toleration["key"], toleration["effect"]) in taints
    assert GPU_RESOURCE in pod["container_config"]["resources"]["limits"]
    template = "k8s.io/cluster-autoscaler/node-template"
    assert group["tags"][f"{template}/resources/{GPU_RESOURCE}"] == "1"
    assert group["tags"][f"{template}/label/unified-ai/pool"] == "gpu"


def test_gke_command_matches_gpu_profile():
    text = GPU_README.read_text()
    selector = GPU_TRAINING.k8s_config()["pod_spec_config"]["node_selector"]
    for key, value in selector.items():
        assert f"--node-labels={key}={value}" in text
    assert f"--node-taints={GPU_TAINT_KEY}=present:NoSchedule" in text


def test_postgres_storage_names_the_installed_driver():
    """SQLAlchemy 2.1 maps a bare postgresql:// to psycopg 3, which the project does not
    install (dagster-postgres brings psycopg2): without a scheme every Postgres instance fails
    to open (found by running the production stack)."""
    import importlib.util

    import sqlalchemy as sa

    instance = yaml.safe_load((DEPLOY / "dagster.yaml").read_text())
    scheme = instance["storage"]["postgres"]["postgres_db"]["scheme"]
    helm = yaml.safe_load((DEPLOY / "helm" / "values.yaml").read_text())
    assert helm["postgresql"]["postgresqlScheme"] == scheme
    driver = sa.engine.make_url(f"{scheme}://u@h/d").get_dialect().driver
    assert importlib.util.find_spec(driver) is not None, f"{scheme}: {driver} is not installed"
