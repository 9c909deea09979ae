"""Load on the support workflow served by Ray Serve (issue 15): latency and throughput at a
steady load and during a 5x spike, with autoscaling on and off; the same five parts called in
one process; the per-request cost of placement and audit.

Setup (untimed), as tests/serving/conftest.py stands the service up: a local Ray cluster
started here (a CPU head and a worker with one logical GPU in the `gpu` pool: no CUDA on this
machine, so the explainer's "GPU" replica computes on CPU), real MLflow (sqlite in a scratch
home), the fraud model trained and promoted through the ledger (one version, the trees by
default: occlusion, the heavier explanation), the `support_intent_model` asset with its
default config, and the `serving` asset deploying both applications through the dashboard's
REST API. Requests: customers of the retrieval store with a declined payment whose approved
payments the champion scores calm, and decline-reason messages (some also asking for the
refund), kept only when the one-process pipeline answers them: every request runs all five
parts (classify, retrieve, explain, fraud check, decide) and is answered in one process (the
service under load may still escalate, e.g. a fraud check that times out: counted, with why).

Measured, in one run:
  direct   the five parts' plain functions called one after the other in this process
           (intent model from MLflow, `customers.build_store`, `explain.attribute`/`describe`,
           the fraud model's `score`, `decide.decide`), one request at a time;
  serial   the same requests through `POST /support`, one at a time (blocks alternate with
           `direct`); `direct_ratio` = p50 serial / p50 direct;
  plan     `plan_ms` of each request's audit record (the ingress times `plan_request`);
           `plan_share` = p50 plan_ms / p50 serial latency; the audit append is timed here by
           writing the run's own records again with `audit.append_record` (same disk);
  load     open loop at a constant rate (latency from each request's scheduled send time, so a
           backlog is counted, not hidden): warm-up, steady, then 5x the rate (the spike);
           `spike_ratio` = p99 of the answers (HTTP 200) to requests sent from 60 s after the
           spike's start to its end / the same of the steady phase (a request a replica sheds
           at its `max_in_flight`, a quick 503, is counted in `!200`, not in the p99).
           Twice: autoscaling on (the shipped policy's
           `serving.autoscaling` bounds and targets, with a bench-local policy's short delays:
           AUTOSCALE_DELAYS) and off (`serving` config `replicas`: one of each part).
           The rate (or --rate) comes from two capacities measured first (closed loop,
           CALIBRATE_CLIENTS requests always in flight): one replica of each part, and each
           part at the policy's most replicas. When the most replicas hold clearly more, the
           spike is put between the two (where scaling decides); otherwise at 0.8 of the
           capacity at rest (`choose_rate`).
Math threads are pinned to one on both sides (OMP/MKL/OpenBLAS env before Ray starts and
before any import here; the replicas and this process call torch.set_num_threads(1)).

Usage: python bench/serving.py [--quick] [--rate R] [--spike-factor 5] [--family sklearn|torch]
The last line printed is
`direct_ratio=<a> spike_ratio=<b> spike_ratio_noscale=<c> plan_share=<d>`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import signal
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
PROJECT_ROOT = BENCH_DIR.parent
MODEL = "payments-risk"
PINNED_THREADS = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
# The bench-local policy: the shipped autoscaling bounds and targets, shorter delays and
# Serve's metrics windows, so a 60 s wait is enough for Serve to act.
AUTOSCALE_DELAYS = {"upscale_delay_s": 3.0, "downscale_delay_s": 60.0, "look_back_period_s": 5.0,
                    "metrics_interval_s": 1.0}
FIXED = {"ingress": 1, "classify": 1, "retrieve": 1, "explain": 1, "fraud": 1}
CALIBRATE_CLIENTS = 12
SCALING_GAIN = 1.15  # the most replicas must hold this much more for the spike to exceed rest
SPIKE_OF_CAPACITY = 0.8
MESSAGES = (
    "why was my payment declined",
    "where is my refund and why was my payment declined?",
    "my card was declined at the grocery store, why",
    "what is the reason my payment was declined yesterday",
    "why do you keep declining my card",
    "hi, why was my online purchase blocked? thanks",
)


@dataclass(frozen=True)
class Phases:
    serial: int  # requests per side per block (3 blocks, alternating)
    calibrate_s: float
    warmup_s: float
    steady_s: float
    spike_s: float
    spike_measured_after_s: float


FULL = Phases(serial=100, calibrate_s=20, warmup_s=10, steady_s=120, spike_s=180,
              spike_measured_after_s=60)
QUICK = Phases(serial=8, calibrate_s=4, warmup_s=2, steady_s=6, spike_s=12,
               spike_measured_after_s=6)


@dataclass
class Sample:
    phase: str
    sent: float  # scheduled send time, seconds from the start of the load
    latency_s: float
    status: int  # HTTP status; 0 timeout, -1 connection error
    request_id: str | None = None
    decision: str | None = None
    server_ms: float | None = None
    reason: str | None = None


@dataclass
class World:
    settings: Any
    instance: Any
    resources: dict
    dashboard: str
    http_port: int
    deployments: list[float] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}/support"

    @property
    def audit_path(self) -> Path:
        return self.settings.home / "serving" / "audit.jsonl"


# the machine -------------------------------------------------------------------------------


def machine() -> str:
    model = "?"
    with open("/proc/cpuinfo") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    from importlib.metadata import version

    libs = " ".join(f"{n}={version(n)}" for n in ("ray", "torch", "scikit-learn", "mlflow",
                                                    "dagster"))
    return (f"machine: cpus={os.cpu_count()} cpu={model!r} mem={memory:.0f}GiB "
            f"platform={platform.platform()} python={platform.python_version()} {libs}")


def cpu_times() -> tuple[float, float]:
    """(busy, total) jiffies of all CPUs, from /proc/stat."""
    with open("/proc/stat") as stat:
        values = [float(v) for v in stat.readline().split()[1:]]
    idle = values[3] + values[4]
    return sum(values) - idle, sum(values)


def busy_cores(before: tuple[float, float], after: tuple[float, float]) -> float:
    busy, total = after[0] - before[0], after[1] - before[1]
    return (os.cpu_count() or 1) * busy / total if total else 0.0


# setup -----------------------------------------------------------------------------------


def start_cluster(temp_dir: str) -> tuple[Any, str]:
    """A CPU head with the dashboard and a worker with one logical GPU in the `gpu` pool
    (tests/serving/conftest.py)."""
    from ray.cluster_utils import Cluster

    from tests.ray.conftest import free_port
    from unified_assets.compute import GPU_NODE_POOL, POOL_LABEL

    port = free_port()
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 3, "num_gpus": 0, "include_dashboard": True, "dashboard_host": "127.0.0.1",
        "dashboard_port": port, "dashboard_agent_listen_port": free_port(),
        "object_store_memory": 80_000_000, "temp_dir": temp_dir})
    cluster.add_node(num_cpus=1, num_gpus=1, labels={POOL_LABEL: GPU_NODE_POOL},
                     object_store_memory=80_000_000, dashboard_agent_listen_port=free_port())
    cluster.wait_for_nodes()
    return cluster, f"http://127.0.0.1:{port}"


def build_models(box: dict, settings: Any, resources: dict, instance: Any, family: str,
                 rows: int) -> None:
    """The fraud model (one version, approved and promoted through the ledger) and the
    intent model (the asset, default config); in a thread while the cluster starts."""
    try:
        import dagster as dg

        from unified_assets.assets.serving import support_intent_model
        from unified_assets.ml.dataset_spec import payments_spec
        from unified_assets.ml.generator import TARGET, generate_batch
        from unified_assets.services.champion import ChampionLedger

        spec = payments_spec(settings.landing_dir)
        numeric, categorical = spec.numeric_features, spec.categorical_features
        frame = generate_batch(0, rows)
        if family == "torch":
            from unified_assets.ml.torch_model import TorchParams, TorchRiskModel, train_torch

            params = TorchParams(epochs=4, batch_size=64, hidden_units=32)
            model = TorchRiskModel.from_training(
                train_torch(frame, numeric, categorical, TARGET, params), params)
        else:
            from unified_assets.ml.sklearn_model import SklearnParams, SklearnRiskModel, fit_sklearn

            trees = fit_sklearn(frame, numeric, categorical, TARGET, SklearnParams())
            model = SklearnRiskModel(trees.pipeline, trees.levels, numeric, categorical)
        registry, store = resources["mlflow_registry"], resources["decisions"]
        version = registry.log_candidate(
            model_name=MODEL, family=family, flavor="pyfunc", model=model, params={},
            metrics={}, tags={}, pip_requirements=["pandas"]).version
        store.append_event(model_name=MODEL, version=version, kind="decision",
                           decision="approve", actor="bench", reason="bench: gates passed")
        ChampionLedger(store, registry).promote(MODEL, version, "bench", "bench champion",
                                                evaluated_against=None)
        assert dg.materialize([support_intent_model], resources=resources,
                              instance=instance).success
        box["version"] = version
    except BaseException as error:  # noqa: BLE001 - re-raised by the caller
        box["error"] = error


def write_policy(folder: Path) -> Path:
    """The shipped policy with short autoscaling delays (bounds and targets as shipped)."""
    import yaml

    from unified_assets.policy import DEFAULT_AUTOSCALING, DEFAULT_POLICY_PATH

    policy = yaml.safe_load(DEFAULT_POLICY_PATH.read_text())
    shipped = (policy.get("serving") or {}).get("autoscaling") or {}
    policy.setdefault("serving", {})["autoscaling"] = {
        name: {**rule.model_dump(exclude_none=True), **shipped.get(name, {}), **AUTOSCALE_DELAYS}
        for name, rule in DEFAULT_AUTOSCALING.items()}
    path = folder / "bench-policy.yaml"
    path.write_text(yaml.safe_dump(policy))
    return path


def deploy(world: World, replicas: dict[str, int] | None) -> dict:
    """Materialize `serving` (fixed replicas, or the policy's autoscaling); Serve's
    autoscaling_config as deployed, per deployment."""
    import dagster as dg

    from unified_assets.assets.serving import serving, support_intent_model

    config: dict[str, Any] = {"http_port": world.http_port}
    if replicas:
        config["replicas"] = replicas
    started = time.perf_counter()
    result = dg.materialize([support_intent_model, serving], selection=[serving],
                            resources=world.resources, instance=world.instance,
                            run_config={"ops": {"serving": {"config": config}},
                                        "loggers": {"console": {"config": {
                                            "log_level": "WARNING"}}}})
    assert result.success, "serving did not deploy"
    world.deployments.append(time.perf_counter() - started)
    metadata = result.asset_materializations_for_node("serving")[0].metadata
    return metadata["autoscaling_config"].value


# the requests ----------------------------------------------------------------------------


class Direct:
    """The five parts' plain functions in this process, on the models the service serves."""

    def __init__(self, world: World, fraud_version: str) -> None:
        import mlflow
        import torch

        from unified_assets.serving.customers import StoreSpec, build_store
        from unified_assets.serving.explain import load_fraud_model
        from unified_assets.serving.profiles import ServingRules

        torch.set_num_threads(1)
        uri = world.settings.mlflow_tracking_uri
        mlflow.set_tracking_uri(uri)
        mlflow.set_registry_uri(uri)
        intent = world.resources["mlflow_registry"].client().search_model_versions(
            "name='support-intent'")
        self.intent_label = f"support-intent v{max(int(v.version) for v in intent)}"
        self.intent = mlflow.pyfunc.load_model(
            f"models:/support-intent/{max(int(v.version) for v in intent)}").unwrap_python_model()
        self.store = build_store(StoreSpec())  # the serving asset's default store
        spec = world.resources["dataset"].spec
        self.fraud = load_fraud_model(MODEL, fraud_version, uri, spec.numeric_features,
                                      spec.categorical_features)
        self.reference = self.store.frame
        self.rules = ServingRules()

    def run(self, customer_id: int, message: str) -> tuple[Any, dict[str, float], float]:
        """(outcome, per-part ms, total ms) of one request."""
        import pandas as pd

        from unified_assets.serving.decide import FraudCheck, decide, explain_target
        from unified_assets.serving.explain import attribute, describe

        marks = [time.perf_counter()]
        intent = self.intent.classify(message)
        marks.append(time.perf_counter())
        customer = self.store.lookup(customer_id, self.rules.recent_transactions)
        marks.append(time.perf_counter())
        target = explain_target(intent["intents"], customer)
        explanation = None
        if target is not None:
            result = attribute(self.fraud, pd.DataFrame([target]), self.reference, False)
            explanation = describe(target, result["scores"][0], result["contributions"][0],
                                   self.fraud.label)
        marks.append(time.perf_counter())
        rows = customer["transactions"]
        scores = self.fraud.score(pd.DataFrame(rows))
        ids = [str(r.get("transaction_id", i)) for i, r in enumerate(rows)]
        fraud = FraudCheck(dict(zip(ids, map(float, scores), strict=True)), self.fraud.label, 1)
        marks.append(time.perf_counter())
        outcome = decide(intent, customer, fraud, explanation, None, self.rules)
        marks.append(time.perf_counter())
        names = ("classify", "retrieve", "explain", "fraud", "decide")
        parts = {n: (marks[i + 1] - marks[i]) * 1000 for i, n in enumerate(names)}
        return outcome, parts, (marks[-1] - marks[0]) * 1000

    def requests(self, count: int = 40) -> list[tuple[int, str]]:
        """(customer, message) pairs that run all five parts and are answered: customers
        with a declined payment whose approved payments score calm."""
        import pandas as pd

        calm = self.rules.escalate_risk * 0.8
        chosen: list[tuple[int, str]] = []
        for customer_id in range(1, self.store.spec.customers + 1):
            customer = self.store.lookup(customer_id)
            if not any(p["status"] == "declined" for p in customer["transactions"]):
                continue
            approved = [p for p in customer["transactions"] if p["status"] == "approved"]
            if approved and max(self.fraud.score(pd.DataFrame(approved))) >= calm:
                continue
            message = MESSAGES[len(chosen) % len(MESSAGES)]
            outcome, _, _ = self.run(customer_id, message)
            if outcome.decision == "answer" and "decline_reason" in self.intent.classify(
                    message)["intents"]:
                chosen.append((customer_id, message))
            if len(chosen) == count:
                return chosen
        if not chosen:
            raise RuntimeError("no customer of the store gets an answer with all five parts")
        return chosen


async def _post(session: Any, url: str, pair: tuple[int, str], phase: str, sent_at: float,
                origin: float, timeout: float) -> Sample:
    import aiohttp

    body = {"customer_id": pair[0], "message": pair[1]}
    sample = Sample(phase, sent_at - origin, 0.0, 0)
    try:
        async with session.post(url, json=body,
                                timeout=aiohttp.ClientTimeout(total=timeout)) as response:
            payload = await response.json(content_type=None)
            sample.status = response.status
            sample.request_id = payload.get("request_id")
            sample.decision = payload.get("decision")
            sample.server_ms = payload.get("latency_ms")
            sample.reason = payload.get("reason")
    except TimeoutError:
        sample.status = 0
    except (aiohttp.ClientError, ValueError):  # refused, reset, a body that is not JSON
        sample.status = -1
    sample.latency_s = time.perf_counter() - sent_at
    return sample


def _session() -> Any:
    import aiohttp

    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=512))


async def serial(url: str, pairs: list[tuple[int, str]], count: int, timeout: float = 60
                 ) -> list[Sample]:
    """One request at a time (keep-alive connection), in the given order."""
    out = []
    async with _session() as session:
        origin = time.perf_counter()
        for i in range(count):
            out.append(await _post(session, url, pairs[i % len(pairs)], "serial",
                                   time.perf_counter(), origin, timeout))
    return out


async def closed_loop(url: str, pairs: list[tuple[int, str]], clients: int, seconds: float
                      ) -> list[Sample]:
    """`clients` requests always in flight for `seconds`: the throughput the service holds."""
    out: list[Sample] = []
    async with _session() as session:
        origin = time.perf_counter()
        end = origin + seconds

        async def client(index: int) -> None:
            i = index
            while time.perf_counter() < end:
                out.append(await _post(session, url, pairs[i % len(pairs)], "calibrate",
                                       time.perf_counter(), origin, 60))
                i += clients

        await asyncio.gather(*(client(k) for k in range(clients)))
    return out


async def open_loop(url: str, pairs: list[tuple[int, str]], phases: list[tuple[str, float, float]],
                    timeout: float) -> tuple[list[Sample], dict[str, tuple[float, float]]]:
    """Requests sent at a constant rate per phase (name, seconds, rate), whatever the service
    does; each latency runs from its scheduled send time. Also each phase's window and the
    cores busy during it."""
    samples: list[Sample] = []
    windows: dict[str, tuple[float, float]] = {}
    async with _session() as session:
        tasks = []
        origin = time.perf_counter()
        start, index = origin, 0
        for name, seconds, rate in phases:
            windows[name] = (start - origin, start - origin + seconds)
            count = int(round(seconds * rate))
            for k in range(count):
                at = start + k / rate
                delay = at - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                tasks.append(asyncio.create_task(_post(session, url, pairs[index % len(pairs)],
                                                       name, at, origin, timeout)))
                index += 1
            start += seconds
        samples = list(await asyncio.gather(*tasks))
    return samples, windows


class ReplicaWatch:
    """Running replicas per deployment, read from Serve's REST API every `every` s."""

    def __init__(self, dashboard: str, every: float = 3.0) -> None:
        self.dashboard, self.every = dashboard, every
        self.seen: list[tuple[float, dict[str, int]]] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> ReplicaWatch:
        self.origin = time.perf_counter()
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(timeout=30)

    def _run(self) -> None:
        from unified_assets.serving.deploy import serve_details

        while not self.stop.is_set():
            try:
                details = serve_details(self.dashboard, timeout=10)
                counts = {}
                for app in (details.get("applications") or {}).values():
                    for name, deployment in (app.get("deployments") or {}).items():
                        counts[name] = sum(r.get("state") == "RUNNING"
                                           for r in deployment.get("replicas") or [])
                self.seen.append((time.perf_counter() - self.origin, counts))
            except Exception:  # noqa: BLE001 - a busy dashboard: the next read
                pass
            self.stop.wait(self.every)

    def most(self, start: float, end: float) -> dict[str, int]:
        out: dict[str, int] = {}
        for at, counts in self.seen:
            if start <= at <= end:
                for name, n in counts.items():
                    out[name] = max(out.get(name, 0), n)
        return out

    def first_above(self, name: str, level: int, after: float) -> float | None:
        return next((at for at, counts in self.seen if at >= after
                     and counts.get(name, 0) > level), None)


# figures -----------------------------------------------------------------------------------


def pct(values: list[float], q: float) -> float:
    import numpy as np

    return float(np.percentile(values, q)) if values else float("nan")


def summary(samples: list[Sample], window: tuple[float, float], everyone: list[Sample]
            ) -> dict[str, Any]:
    """Latency of `samples` (sent in `window`); throughput: answers (HTTP 200) of any
    request completed within the window, per second."""
    latencies = [s.latency_s * 1000 for s in samples]
    ok = [s for s in samples if s.status == 200]
    done = sum(s.status == 200 and window[0] <= s.sent + s.latency_s < window[1] for s in everyone)
    seconds = window[1] - window[0]
    return {"sent": len(samples), "ok": len(ok), "answered": sum(s.decision == "answer" for s in ok),
            "escalated": sum(s.decision == "escalate" for s in ok),
            "non_200": len(samples) - len(ok), "timeouts": sum(s.status == 0 for s in samples),
            "throughput": done / seconds if seconds else 0.0,
            "p50": pct(latencies, 50), "p90": pct(latencies, 90), "p99": pct(latencies, 99),
            # Answers only: a quick 503 (a replica shedding load) must not lower the figure.
            "p99_ok": pct([s.latency_s * 1000 for s in ok], 99),
            "max": max(latencies, default=float("nan"))}


def row(name: str, rate: float, figures: dict[str, Any], cores: float | None = None) -> str:
    busy = f"{cores:6.2f}" if cores is not None else f"{'':>6}"
    return (f"  {name:<22}{rate:7.1f}{figures['throughput']:8.1f}{figures['sent']:7d}"
            f"{figures['escalated']:6d}{figures['non_200']:6d}{figures['timeouts']:6d}"
            f"{figures['p50']:9.1f}"
            f"{figures['p90']:9.1f}{figures['p99']:9.1f}{figures['p99_ok']:9.1f}"
            f"{figures['max']:9.1f} {busy}")


HEADER = (f"  {'phase':<22}{'rate':>7}{'200/s':>8}{'sent':>7}{'esc':>6}{'!200':>6}{'t/o':>6}{'p50 ms':>9}"
          f"{'p90 ms':>9}{'p99 ms':>9}{'p99 200':>9}{'max ms':>9} {'cores':>6}")


def measure_capacity(world: World, pairs: list[tuple[int, str]], phases: Phases,
                     label: str) -> float:
    """Answers per second with CALIBRATE_CLIENTS requests always in flight."""
    samples = asyncio.run(closed_loop(world.url, pairs, CALIBRATE_CLIENTS, phases.calibrate_s))
    capacity = sum(s.status == 200 and s.sent + s.latency_s <= phases.calibrate_s
                   for s in samples) / phases.calibrate_s
    print(f"capacity, {label}, {CALIBRATE_CLIENTS} requests in flight for "
          f"{phases.calibrate_s:g} s: {capacity:.2f} req/s (p50 "
          f"{pct([s.latency_s * 1000 for s in samples], 50):.0f} ms, "
          f"{sum(s.decision == 'escalate' for s in samples)} escalated)", flush=True)
    return capacity


def max_replicas(settings: Any) -> dict[str, int]:
    """Each part at the most replicas the bench policy lets it scale to."""
    from unified_assets.policy import load_policy
    from unified_assets.serving.profiles import PARTS

    rules = load_policy(settings.policy_path).serving.rules()
    return {part: rules[name].max_replicas for part, (name, _, _) in PARTS.items()}


def choose_rate(args: argparse.Namespace, capacity: dict[str, float]) -> tuple[float, str]:
    """The steady rate: --rate, or from the two capacities. When the most replicas hold
    clearly more than one of each (SCALING_GAIN), the spike is put halfway between the two
    (above what the deployment at rest holds, within what the scaled one holds: where scaling
    decides); otherwise at SPIKE_OF_CAPACITY of the capacity at rest (scaling adds nothing
    here, and a spike above capacity would only grow a backlog on both sides)."""
    factor = args.spike_factor
    if args.rate is not None:
        return args.rate, "--rate"
    fixed, most = capacity["fixed"], capacity["most"]
    if most > SCALING_GAIN * fixed:
        spike = (fixed + most) / 2
        why = (f"the spike halfway between the capacity at rest ({fixed:.2f}) and with the most "
               f"replicas ({most:.2f})")
    else:
        spike = SPIKE_OF_CAPACITY * fixed
        why = (f"the most replicas hold {most / fixed:.2f}x the capacity at rest, not more than "
               f"{SCALING_GAIN}x: the spike at {SPIKE_OF_CAPACITY:g} x the capacity at rest "
               f"({fixed:.2f})")
    return max(0.2, spike / factor), why


def load_run(world: World, pairs: list[tuple[int, str]], label: str, rate: float, factor: float,
             phases: Phases, timeout: float) -> dict[str, Any]:
    """Warm-up, steady and spike at a constant rate each; figures per phase."""
    plan = [("warmup", phases.warmup_s, rate), ("steady", phases.steady_s, rate),
            ("spike", phases.spike_s, rate * factor)]
    marks: dict[str, tuple[float, float]] = {}

    def cores_per_phase() -> None:  # /proc/stat at each phase boundary
        origin = time.perf_counter()
        edges = [0.0]
        for _, seconds, _ in plan:
            edges.append(edges[-1] + seconds)
        readings = []
        for edge in edges:
            time.sleep(max(0.0, origin + edge - time.perf_counter()))
            readings.append(cpu_times())
        for i, (name, _, _) in enumerate(plan):
            marks[name] = (readings[i], readings[i + 1])

    with ReplicaWatch(world.dashboard) as watch:
        meter = threading.Thread(target=cores_per_phase, daemon=True)
        meter.start()
        samples, windows = asyncio.run(open_loop(world.url, pairs, plan, timeout))
        meter.join(timeout=60)
        time.sleep(0.5)
    spike_start, spike_end = windows["spike"]
    steady = [s for s in samples if s.phase == "steady"]
    spike = [s for s in samples if s.phase == "spike"]
    late = [s for s in spike if s.sent >= spike_start + phases.spike_measured_after_s]
    figures = {
        "steady": summary(steady, windows["steady"], samples),
        "spike": summary(spike, windows["spike"], samples),
        "spike_late": summary(late, (spike_start + phases.spike_measured_after_s, spike_end),
                              samples),
    }
    cores = {name: busy_cores(*marks[name]) for name in marks}
    print(f"{label}: steady {rate:.2f} req/s, spike {rate * factor:.2f} req/s "
          f"({factor:g}x) for {phases.spike_s:g} s", flush=True)
    print(HEADER)
    print(row("steady", rate, figures["steady"], cores.get("steady")))
    print(row("spike (all)", rate * factor, figures["spike"], cores.get("spike")))
    print(row(f"spike from +{phases.spike_measured_after_s:g} s", rate * factor,
              figures["spike_late"]))
    replicas = {"steady": watch.most(*windows["steady"]), "spike": watch.most(*windows["spike"])}
    print(f"  running replicas, most seen: steady {replicas['steady']}; spike {replicas['spike']}")
    ups = {name: watch.first_above(name, replicas["steady"].get(name, 1), spike_start)
           for name in replicas["spike"] if replicas["spike"][name] > replicas["steady"].get(name, 1)}
    if ups:
        print("  scaled up after the spike began: " + ", ".join(
            f"{n} +{at - spike_start:.0f} s" for n, at in ups.items() if at is not None))
    statuses: dict[int, int] = {}
    for s in samples:
        statuses[s.status] = statuses.get(s.status, 0) + 1
    decisions: dict[str, int] = {}
    for s in samples:
        if s.decision:
            decisions[s.decision] = decisions.get(s.decision, 0) + 1
    reasons: dict[str, int] = {}
    for s in samples:
        if s.decision == "escalate" and s.reason:
            key = s.reason.split(":")[0][:60]
            reasons[key] = reasons.get(key, 0) + 1
    print(f"  statuses {dict(sorted(statuses.items()))}; decisions {decisions}", flush=True)
    if reasons:
        print(f"  escalated because: {reasons}", flush=True)
    return {"figures": figures, "samples": samples, "replicas": replicas, "cores": cores}


def audit_cost(world: World, records: list[dict]) -> list[float]:
    """ms per `append_record` of this run's own records, to a file beside the audit."""
    from unified_assets.serving.audit import append_record

    target = world.audit_path.parent / "bench-replay.jsonl"
    out = []
    for record in records:
        started = time.perf_counter()
        append_record(target, record)
        out.append((time.perf_counter() - started) * 1000)
    target.unlink(missing_ok=True)
    return out


# cleanup -----------------------------------------------------------------------------------


def leftovers(marker: str) -> list[int]:
    """Processes whose command line names this run's Ray temp dir (this run's Ray)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if marker.encode() in (entry / "cmdline").read_bytes():
                pids.append(int(entry.name))
        except OSError:
            continue
    return pids


def stop_cluster(cluster: Any, marker: str) -> None:
    try:
        cluster.shutdown()
    finally:
        time.sleep(1)
        for pid in leftovers(marker):
            try:
                os.kill(pid, signal.SIGKILL)
                print(f"killed a leftover Ray process {pid}", file=sys.stderr)
            except ProcessLookupError:
                pass


# main --------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short phases: a smoke run")
    parser.add_argument("--rate", type=float, default=None,
                        help="steady requests per second (default: from the capacities measured "
                        "first, see choose_rate)")
    parser.add_argument("--spike-factor", type=float, default=5.0)
    parser.add_argument("--family", choices=("sklearn", "torch"), default="sklearn")
    parser.add_argument("--train-rows", type=int, default=5000)
    parser.add_argument("--timeout", type=float, default=30.0, help="client timeout per request")
    parser.add_argument("--keep", action="store_true", help="keep the scratch folder")
    parser.add_argument("--plain-serve", action="store_true",
                        help="Ray nodes without the product's SERVE_NODE_ENV (Serve's defaults)")
    parser.add_argument("--latency-only", action="store_true",
                        help="stop after the one-request-at-a-time comparison (direct_ratio)")
    args = parser.parse_args()
    phases = QUICK if args.quick else FULL
    # Stopped (SIGTERM): unwind, so the finally below stops this run's Ray.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    os.environ.update(PINNED_THREADS)
    os.environ.update({"RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled",
                       "PYTHONPATH": str(PROJECT_ROOT)})
    for name in ("UNIFIED_AI_DEPLOYMENT", "UNIFIED_AI_DATASET_SPEC", "UNIFIED_AI_POLICY",
                 "DAGSTER_HOME", "MLFLOW_TRACKING_URI", "UNIFIED_AI_HOME", "RAY_ADDRESS",
                 "UNIFIED_AI_DECISIONS_URL"):
        os.environ.pop(name, None)
    sys.path.insert(0, str(PROJECT_ROOT))
    from unified_assets.serving.deploy import SERVE_NODE_ENV

    for name, value in SERVE_NODE_ENV.items():  # the nodes inherit this environment
        if args.plain_serve:
            os.environ.pop(name, None)
        else:
            os.environ.setdefault(name, value)

    import dagster as dg
    from mlflow import MlflowClient

    from tests.ray.conftest import free_port
    from unified_assets.definitions import build_definitions
    from unified_assets.serving.audit import read_records
    from unified_assets.settings import Settings

    command = "python bench/serving.py " + " ".join(sys.argv[1:])
    print(machine(), f"load={os.getloadavg()[0]:.2f}", flush=True)
    print("serve node env: " + json.dumps({k: os.environ.get(k) for k in SERVE_NODE_ENV}),
          flush=True)
    print(f"command: {command.strip()}", flush=True)
    began = time.perf_counter()
    scratch = Path(tempfile.mkdtemp(prefix="uai-sb-"))
    temp_dir = str(scratch / "ray")
    home = scratch / "home"
    (home / "dagster").mkdir(parents=True)
    uri = f"sqlite:///{home / 'mlflow.db'}"
    MlflowClient(tracking_uri=uri, registry_uri=uri).search_experiments()
    Path("/tmp/ray").mkdir(exist_ok=True)
    base = Settings(deployment="local", home=home, dataset_spec=None,
                    policy_path=str(write_policy(scratch)))
    cluster = None
    try:
        with dg.instance_for_test(temp_dir=str(home / "dagster")) as instance:
            box: dict[str, Any] = {}
            builder = threading.Thread(target=build_models, daemon=True, args=(
                box, base, dict(build_definitions(base).resources), instance, args.family,
                args.train_rows))
            builder.start()
            cluster, dashboard = start_cluster(temp_dir)
            builder.join(timeout=900)
            if "error" in box:
                raise RuntimeError(f"the models were not built: {box['error']!r}")
            from dataclasses import replace

            settings = replace(base, ray_address=dashboard)
            world = World(settings, instance, dict(build_definitions(settings).resources),
                          dashboard, free_port())
            deploy(world, FIXED)
            setup_s = time.perf_counter() - began
            print(f"setup (untimed): cluster, models ({args.family} fraud model "
                  f"v{box['version']}, {args.train_rows} rows) and a deployment in "
                  f"{setup_s:.0f} s", flush=True)

            # direct vs serial, alternating blocks ------------------------------------
            direct = Direct(world, box["version"])
            pairs = direct.requests()
            print(f"requests: {len(pairs)} (customer, message) pairs, all five parts, each "
                  f"answered in one process", flush=True)
            asyncio.run(serial(world.url, pairs, 5))  # warm the replicas and the connection
            for pair in pairs[:5]:
                direct.run(*pair)
            direct_ms: list[float] = []
            direct_parts: dict[str, list[float]] = {}
            served: list[Sample] = []
            for _ in range(3):
                for i in range(phases.serial):
                    outcome, parts, total = direct.run(*pairs[i % len(pairs)])
                    direct_ms.append(total)
                    for name, ms in parts.items():
                        direct_parts.setdefault(name, []).append(ms)
                served += asyncio.run(serial(world.url, pairs, phases.serial))
            records = {r["request_id"]: r for r in read_records(world.audit_path)}
            served_ms = [s.latency_s * 1000 for s in served]
            served_records = [records[s.request_id] for s in served if s.request_id in records]
            plan_ms = [r["plan_ms"] for r in served_records if "plan_ms" in r]
            server_ms = [s.server_ms for s in served if s.server_ms is not None]
            audit_ms = audit_cost(world, served_records)
            direct_p50, served_p50 = statistics.median(direct_ms), statistics.median(served_ms)
            direct_ratio = served_p50 / direct_p50
            plan_share = statistics.median(plan_ms) / served_p50
            print(f"one request at a time ({3 * phases.serial} per side, 3 alternating "
                  f"blocks):")
            print(f"  direct (one process)  p50 {direct_p50:7.2f} ms  p99 "
                  f"{pct(direct_ms, 99):7.2f} ms")
            print(f"  served (client)       p50 {served_p50:7.2f} ms  p99 "
                  f"{pct(served_ms, 99):7.2f} ms  non-200 "
                  f"{sum(s.status != 200 for s in served)}, answered "
                  f"{sum(s.decision == 'answer' for s in served)}")
            print(f"  served (ingress's latency_ms, parse to response) p50 "
                  f"{statistics.median(server_ms):7.2f} ms")
            print("  per part, p50 ms (served: as the ingress timed the call, hop included):")
            served_parts: dict[str, list[float]] = {}
            for record in served_records:
                for part in record.get("parts") or []:
                    if part.get("latency_ms") is not None:
                        served_parts.setdefault(part["part"], []).append(part["latency_ms"])
            for name in ("classify", "retrieve", "explain", "fraud", "decide"):
                there = served_parts.get(name)
                print(f"    {name:<10} direct {statistics.median(direct_parts[name]):7.2f}   "
                      f"served {statistics.median(there) if there else float('nan'):7.2f}")
            print(f"  placement (plan_request in the ingress) p50 {statistics.median(plan_ms):.3f}"
                  f" ms p99 {pct(plan_ms, 99):.3f} ms; audit append p50 "
                  f"{statistics.median(audit_ms):.3f} ms p99 {pct(audit_ms, 99):.3f} ms "
                  f"({len(audit_ms)} records); shares of the served p50: plan "
                  f"{plan_share:.3%}, audit {statistics.median(audit_ms) / served_p50:.3%}",
                  flush=True)

            if args.latency_only:
                print(f"direct_ratio={direct_ratio:.3f} plan_share={plan_share:.5f}")
                return
            # capacity at rest and at the policy's most replicas; the rate; the load runs
            capacity = {"fixed": measure_capacity(world, pairs, phases, "fixed replicas (1 each)")}
            most = max_replicas(base)
            deploy(world, most)
            capacity["most"] = measure_capacity(world, pairs, phases,
                                                f"the policy's most replicas {most}")
            rate, why = choose_rate(args, capacity)
            print(f"steady rate {rate:.2f} req/s, spike {rate * args.spike_factor:.2f} req/s: "
                  f"{why}", flush=True)
            runs = {}
            for label, replicas in (("autoscaling on", None), ("autoscaling off", FIXED)):
                if replicas is None:
                    deploy(world, FIXED)  # from rest: Serve keeps the replicas it runs
                deployed = deploy(world, replicas)
                if replicas is None:
                    print("autoscaling_config deployed: " + json.dumps(
                        {n: c.get("autoscaling_config", c) for n, c in deployed.items()}))
                time.sleep(2)
                runs[label] = load_run(world, pairs, label, rate, args.spike_factor, phases,
                                       args.timeout)
            records = {r["request_id"]: r for r in read_records(world.audit_path)}
            for label, run in runs.items():
                for phase in ("steady", "spike"):
                    plans = [records[s.request_id]["plan_ms"] for s in run["samples"]
                             if s.phase == phase and s.request_id in records
                             and "plan_ms" in records[s.request_id]]
                    if plans:
                        print(f"  plan_ms {label}, {phase}: p50 {statistics.median(plans):.3f} "
                              f"p99 {pct(plans, 99):.3f}")
        on, off = runs["autoscaling on"]["figures"], runs["autoscaling off"]["figures"]
        # p99 of the answers (HTTP 200): shed requests (503 at once) are counted in `!200`.
        spike_ratio = on["spike_late"]["p99_ok"] / on["steady"]["p99_ok"]
        spike_ratio_noscale = off["spike_late"]["p99_ok"] / off["steady"]["p99_ok"]
        print(f"deployments took {', '.join(f'{s:.0f}' for s in world.deployments)} s; "
              f"whole run {time.perf_counter() - began:.0f} s; load at the end "
              f"{os.getloadavg()[0]:.2f}")
        print(f"direct_ratio={direct_ratio:.3f} spike_ratio={spike_ratio:.3f} "
              f"spike_ratio_noscale={spike_ratio_noscale:.3f} plan_share={plan_share:.5f}",
              flush=True)
    finally:
        if cluster is not None:
            stop_cluster(cluster, temp_dir)
        if args.keep:
            print(f"scratch kept in {scratch}", file=sys.stderr)
        else:
            shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
