"""One real Ray cluster and one Serve deployment for the whole module: a CPU head and a
worker node with one logical GPU in the `gpu` pool (as tests/ray starts them, so a test can
lose the GPU node), started while the models are trained; a champion built directly (two
registered fraud-model versions, approved, v1 promoted through the ledger) rather than by a
lifecycle run; and the `serving` asset deploying it through the dashboard's REST API, as in
production. Free ports, a short temp dir, usage stats and token auth off; always shut down."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dagster as dg
import pytest

from tests.ray.conftest import free_port
from unified_assets.settings import Settings

REPO = Path(__file__).resolve().parents[2]
MODEL = "payments-risk"
HEALTH_CHECK = {"health_check_period_ms": 500, "health_check_failure_threshold": 2}
# A fraud service that fails (tests/serving/faulty.py), deployed beside the real one.
FAULTY_APP = {"name": "fraud-faulty", "route_prefix": "/fraud-faulty", "args": {},
              "import_path": "tests.serving.faulty:faulty"}
# Small and quick: the module's budget is ~90 s on two cores, Ray included.
INTENT_CONFIG = {"per_intent": 150, "pairs": 60}
TRAIN_ROWS = 2500


@dataclass
class ServingWorld:
    settings: Settings
    instance: dg.DagsterInstance
    resources: dict[str, Any]
    cluster: Any
    dashboard: str
    http_port: int
    versions: dict[str, str]  # family -> registered version
    gpu_node: Any = None
    deployments: list[dg.ExecuteInProcessResult] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}/support"

    @property
    def audit_path(self) -> Path:
        return self.settings.home / "serving" / "audit.jsonl"

    def ask(self, body: Any, timeout: float = 60) -> tuple[int, dict]:
        """POST /support; (status, JSON body). `body` bytes are sent as they are."""
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        request = urllib.request.Request(self.url, data=data, method="POST",
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read() or b"{}")

    def deploy(self, **config: Any) -> dg.ExecuteInProcessResult:
        """Materialize `serving` (the intent model's version comes from its stored output)."""
        from unified_assets.assets.serving import serving, support_intent_model

        result = dg.materialize(
            [support_intent_model, serving], selection=[serving], resources=self.resources,
            instance=self.instance,
            run_config={"ops": {"serving": {"config": {"http_port": self.http_port, **config}}}})
        assert result.success
        self.deployments.append(result)
        return result

    def ledger(self):
        from unified_assets.services.champion import ChampionLedger

        return ChampionLedger(self.resources["decisions"], self.resources["mlflow_registry"])


def _start_head(box: dict, temp_dir: str) -> None:
    """A CPU head node with the dashboard (Serve's REST API)."""
    from ray.cluster_utils import Cluster

    dashboard_port = free_port()
    box["cluster"] = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 3, "num_gpus": 0, "include_dashboard": True,
        "dashboard_host": "127.0.0.1", "dashboard_port": dashboard_port,
        "dashboard_agent_listen_port": free_port(), "object_store_memory": 80_000_000,
        "temp_dir": temp_dir, "_system_config": HEALTH_CHECK})
    box["dashboard"] = f"http://127.0.0.1:{dashboard_port}"


def _add_gpu_node(box: dict) -> None:
    """A worker with one logical GPU, labelled as the GPU pool (scripts/ray_cluster.sh)."""
    box["gpu_node"] = box["cluster"].add_node(
        num_cpus=1, num_gpus=1, labels={"unified-ai/pool": "gpu"},
        object_store_memory=80_000_000, dashboard_agent_listen_port=free_port())
    box["cluster"].wait_for_nodes()


def _register_fraud_models(settings: Settings, registry: Any) -> dict[str, str]:
    """Two real fraud-model versions of the payments data: v1 trees, v2 torch."""
    from unified_assets.ml.dataset_spec import payments_spec
    from unified_assets.ml.generator import TARGET, generate_batch
    from unified_assets.ml.sklearn_model import SklearnParams, SklearnRiskModel, fit_sklearn
    from unified_assets.ml.torch_model import TorchParams, TorchRiskModel, train_torch

    spec = payments_spec(settings.landing_dir)
    numeric, categorical = spec.numeric_features, spec.categorical_features
    frame = generate_batch(0, TRAIN_ROWS)
    trees = fit_sklearn(frame, numeric, categorical, TARGET, SklearnParams(max_iter=40))
    params = TorchParams(epochs=4, batch_size=64, hidden_units=32)
    mlp = TorchRiskModel.from_training(train_torch(frame, numeric, categorical, TARGET, params),
                                       params)
    versions = {}
    for family, model in (("sklearn", SklearnRiskModel(trees.pipeline, trees.levels, numeric,
                                                       categorical)), ("torch", mlp)):
        versions[family] = registry.log_candidate(
            model_name=MODEL, family=family, flavor="pyfunc", model=model, params={},
            metrics={}, tags={}, pip_requirements=["pandas"]).version
    return versions


def _build_models(box: dict, base: Settings, resources: dict, instance: Any) -> None:
    """Two fraud-model versions (approved, v1 champion) and the intent model; in a thread while
    the cluster starts (Ray's Cluster wants the main thread)."""
    try:
        from unified_assets.assets.serving import support_intent_model
        from unified_assets.services.champion import ChampionLedger

        registry, store = resources["mlflow_registry"], resources["decisions"]
        versions = _register_fraud_models(base, registry)
        for version in versions.values():
            store.append_event(model_name=MODEL, version=version, kind="decision",
                               decision="approve", actor="alice", reason="tests: gates passed")
        ChampionLedger(store, registry).promote(MODEL, versions["sklearn"], "alice", "first",
                                                evaluated_against=None)
        assert dg.materialize([support_intent_model], resources=resources, instance=instance,
                              run_config={"ops": {"support_intent_model": {
                                  "config": INTENT_CONFIG}}}).success
        box["versions"] = versions
    except BaseException as error:  # noqa: BLE001 - re-raised in the fixture
        box["error"] = error


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, mlflow_db_template: Path
          ) -> Iterator[ServingWorld]:
    from unified_assets.definitions import build_definitions

    started = time.perf_counter()
    # Ray's processes inherit this environment: the test services import from tests/, token
    # auth stays off (a token file in ~/.ray would switch it on for every later cluster).
    os.environ.update({"RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled",
                       "PYTHONPATH": os.pathsep.join(filter(None, (
                           str(REPO), os.environ.get("PYTHONPATH"))))})
    # The nodes run as the product's do (Serve's throughput mode, deploy.SERVE_NODE_ENV).
    from unified_assets.serving.deploy import SERVE_NODE_ENV

    for name, value in SERVE_NODE_ENV.items():
        os.environ.setdefault(name, value)
    Path("/tmp/ray").mkdir(exist_ok=True)
    temp_dir = tempfile.mkdtemp(prefix="uai-srv-")
    home = tmp_path_factory.mktemp("serving") / "home"
    (home / "dagster").mkdir(parents=True)
    shutil.copy(mlflow_db_template, home / "mlflow.db")
    base = Settings(deployment="local", home=home, dataset_spec=None)
    box: dict[str, Any] = {}
    models: dict[str, Any] = {}
    with dg.instance_for_test(temp_dir=str(home / "dagster")) as instance:
        builder = threading.Thread(target=_build_models, daemon=True, args=(
            models, base, dict(build_definitions(base).resources), instance))
        try:
            # Ray's Cluster wants the main thread, and a node must register within 30 s: the
            # models are built beside the second node only, not while the head starts.
            _start_head(box, temp_dir)
            marks = {"head": time.perf_counter() - started}
            builder.start()
            _add_gpu_node(box)
            marks["gpu node"] = time.perf_counter() - started
            from unified_assets.serving.deploy import deploy

            # While the models are built: the `serving` deployment keeps this application. The
            # first config starts Serve's proxy, so it names the port (later ones cannot).
            http_port = free_port()
            deploy(box["dashboard"], {"proxy_location": "HeadOnly", "http_options": {
                "host": "127.0.0.1", "port": http_port}, "applications": [FAULTY_APP]},
                timeout_s=300)
            marks["faulty fraud service"] = time.perf_counter() - started
            builder.join(timeout=600)
            marks["models"] = time.perf_counter() - started
            if "error" in models:
                raise RuntimeError(f"the models were not built: {models['error']!r}")
            settings = Settings(deployment="local", home=home, dataset_spec=None,
                                ray_address=box["dashboard"])
            world = ServingWorld(settings, instance, dict(build_definitions(settings).resources),
                                 box["cluster"], box["dashboard"], http_port, models["versions"],
                                 box["gpu_node"])
            world.deploy()
            marks["deployed"] = time.perf_counter() - started
            print("\nserving world: " + ", ".join(f"{k} {v:.1f}s" for k, v in marks.items()))
            yield world
        finally:
            if builder.is_alive():
                builder.join(timeout=600)
            if "cluster" in box:
                box["cluster"].shutdown()
            shutil.rmtree(temp_dir, ignore_errors=True)


@dataclass(frozen=True)
class Customers:
    """Customers of the retrieval store picked for what they have, whose approved payments
    the champion (v1) scores below the escalation threshold (so an answer is an answer)."""

    refund: int
    decline: int
    store: Any


def calm_customers(model: Any, store: Any) -> tuple[int, int]:
    """A refund customer and a decline customer (ids 1..199 of `store`) whose approved
    payments `model` scores well below the escalation limit: their answers are not escalated
    for risk, so each intent's own path is what a test sees."""
    import pandas as pd

    from unified_assets.serving.profiles import ServingRules

    limit = ServingRules().escalate_risk

    def calm(customer: dict) -> bool:
        approved = [p for p in customer["transactions"] if p["status"] == "approved"]
        return not approved or max(model.score(pd.DataFrame(approved))) < limit * 0.8

    refund = decline = None
    for customer_id in range(1, 200):
        customer = store.lookup(customer_id)
        declined = any(p["status"] == "declined" for p in customer["transactions"])
        if refund is None and customer["refunds"] and not declined and calm(customer):
            refund = customer_id
        if decline is None and declined and not customer["refunds"] and calm(customer):
            decline = customer_id
        if refund and decline:
            return refund, decline
    raise AssertionError("no calm refund and decline customers in 1..199")


@pytest.fixture(scope="module")
def customers(world: ServingWorld) -> Customers:
    from unified_assets.serving.customers import build_store
    from unified_assets.serving.explain import load_fraud_model

    store = build_store()
    spec = world.resources["dataset"].spec
    model = load_fraud_model(MODEL, world.versions["sklearn"], world.settings.mlflow_tracking_uri,
                             spec.numeric_features, spec.categorical_features)
    return Customers(*calm_customers(model, store), store)
