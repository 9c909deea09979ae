"""Deploying the support workflow and the fraud service to Ray Serve.

The deployment is a declarative Serve config, sent to the Ray dashboard's REST API
(`PUT /api/serve/applications/`), the API `serve deploy` and KubeRay's RayService use: the
Dagster step never imports ray and never joins the cluster as a driver; locally and in
production the same document is deployed. Each part's replicas ask Ray for what their
compute profile and the placement planner decided (`place_parts`), and everything that
changes on a promotion or rollback is `user_config`, so Serve applies it to the running
replicas in place. Each part scales on traffic as the policy's `serving.autoscaling` says
(its Serve `autoscaling_config`), unless the deployment fixes its replicas.

Without RAY_ADDRESS a Ray instance is started on this machine on demand (`ensure_local_ray`)
and keeps serving after the step ends. Plain HTTP (urllib) only."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from unified_assets.compute import GPU_NODE_POOL, POOL_LABEL
from unified_assets.placement.decision import Decision, StepRequirement
from unified_assets.placement.planner import decide
from unified_assets.placement.policy import PlacementPolicy
from unified_assets.placement.snapshot import CapacitySnapshot, RayCapacity
from unified_assets.serving.profiles import (
    FRAUD_APP,
    PARTS,
    SUPPORT_APP,
    ServingRules,
)

APPLICATIONS_PATH = "/api/serve/applications/"
IMPORT_PATHS = {SUPPORT_APP: "unified_assets.serving.app:support_app",
                FRAUD_APP: "unified_assets.serving.app:fraud_app"}
ROUTES = {SUPPORT_APP: "/support", FRAUD_APP: "/fraud"}
RUNNING_STATUSES = {"HEALTHY", "UPSCALING", "DOWNSCALING"}  # a deployment's, as Serve says
STOP_GRACE_S = 10.0  # after SIGTERM, before what is left of a local Ray instance is killed
AUTH_TOKEN_ENV = "RAY_AUTH_TOKEN"  # Ray's token auth: sent as a bearer token when set
# The environment of every Ray node that serves (local, scripts/ray_cluster.sh, the RayService's
# pods): Serve's documented throughput mode (gRPC between replicas, user code and router on the
# replica's own loop, no per-request log to stderr, direct ingress). On two cores it halves
# each handle hop (10-17 ms -> 6-9 ms), and the served p50 went from a median 1.56x to 1.44x
# the five parts in one process (bench/RESULTS.md). A value set by the user wins.
SERVE_NODE_ENV: dict[str, str] = {"RAY_SERVE_THROUGHPUT_OPTIMIZED": "1"}


class DeployError(RuntimeError):
    """Serve did not take the config, or the applications did not come up; says which."""


@dataclass(frozen=True)
class ModelRef:
    name: str
    version: str
    tracking_uri: str

    def as_dict(self) -> dict:
        return {"name": self.name, "version": self.version, "tracking_uri": self.tracking_uri}


@dataclass(frozen=True)
class ServingPlan:
    """What one deployment serves and how: models, the customer store, rules, where state
    goes, the HTTP endpoint, and replicas per part."""

    fraud_model: ModelRef
    intent_model: ModelRef
    numeric: list[str]
    categorical: list[str]
    audit_path: str
    decisions_url: str | None
    store: dict = field(default_factory=lambda: {"seed": 7, "customers": 500, "per_customer": 8})
    rules: ServingRules = field(default_factory=ServingRules)
    http_host: str = "127.0.0.1"
    http_port: int = 8000
    fraud_url: str | None = None
    # Per part: Ray Serve's `autoscaling_config` (the policy's `serving.autoscaling`), or a
    # fixed number of replicas; a part in neither runs one replica.
    autoscaling: dict[str, dict] = field(default_factory=dict)
    replicas: dict[str, int] = field(default_factory=dict)

    def scaling(self, part: str) -> dict:
        """The Serve config keys of a part's replica count: a fixed `num_replicas` (named in
        `replicas`, or no autoscaling for it) or its `autoscaling_config`."""
        if part in self.replicas or part not in self.autoscaling:
            return {"num_replicas": self.replicas.get(part, 1)}
        return {"autoscaling_config": dict(self.autoscaling[part])}

    def floor(self, part: str) -> int:
        """The replicas a part has at least (the ingress's "0 of N running" figure)."""
        scaling = self.scaling(part)
        if "num_replicas" in scaling:
            return int(scaling["num_replicas"])
        return int(scaling["autoscaling_config"].get("min_replicas", 1))

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.http_host in ("0.0.0.0", "::") else self.http_host
        return f"http://{host}:{self.http_port}"

    @property
    def support_url(self) -> str:
        return self.url + ROUTES[SUPPORT_APP]

    @property
    def resolved_fraud_url(self) -> str:
        return self.fraud_url or self.url + ROUTES[FRAUD_APP]


# placement -------------------------------------------------------------------------------


def place_parts(capacity: RayCapacity, placement: PlacementPolicy) -> dict[str, Decision]:
    """Each part's deploy-time placement by the planner: CPU parts on CPU; the explainer on
    the GPU pool when a node there has a GPU free, else as the profile's rule says."""
    snapshot = CapacitySnapshot(ray=capacity)
    return {part: decide(StepRequirement(part, profile), snapshot, placement)
            for part, (_, profile, _) in PARTS.items()}


def actor_options(decision: Decision, capacity: RayCapacity) -> dict:
    """Ray actor options of a part's replicas from its decision: the effective profile's
    request (a degraded GPU part asks for no GPU). A CPU part keeps off the GPU pool, unless
    every live node is in it (one GPU machine), where it would find no node at all."""
    request = decision.effective_profile.ray_request()
    options = {"num_cpus": request["num_cpus"], "num_gpus": request["num_gpus"],
               "memory": request["memory"]}
    if request["resources"]:
        options["resources"] = request["resources"]
    selector = dict(request["label_selector"])
    live_pools = {n.pool for n in capacity.nodes if n.alive}
    if decision.target == "cpu" and live_pools <= {GPU_NODE_POOL}:
        selector.pop(POOL_LABEL, None)
    if selector:
        options["label_selector"] = selector
    return options


def placement_record(decision: Decision, rule: str) -> dict:
    """What the ingress plans each request from: the part's deploy-time placement and the
    policy key its rule comes from."""
    return {"target": decision.target, "where": decision.where, "reason": decision.reason,
            "fallback": decision.fallback, "rule": rule}


# the Serve config ------------------------------------------------------------------------


def serve_config(plan: ServingPlan, decisions: dict[str, Decision], capacity: RayCapacity,
                 placement: PlacementPolicy, extra_apps: tuple[dict, ...] = ()) -> dict:
    """The Serve config (REST API / RayService `serveConfigV2`) of both applications, with
    the policy's placement rules (serving's own, or those they follow)."""
    store = dict(plan.store)
    fraud = {**plan.fraud_model.as_dict(), "numeric": plan.numeric, "categorical": plan.categorical}
    placements = {part: placement_record(d, placement.rule_key(d.profile.name))
                  for part, d in decisions.items()}
    user_configs = {
        "ingress": {"rules": plan.rules.model_dump(mode="json"), "fraud_url": plan.resolved_fraud_url,
                    "placements": placements, "placement_policy": placement.model_dump(mode="json"),
                    "decisions_url": plan.decisions_url, "audit_path": plan.audit_path,
                    "replicas": {part: plan.floor(part) for part in PARTS}},
        "classify": {"intent_model": plan.intent_model.as_dict()},
        "retrieve": {"store": store},
        "explain": {"fraud_model": fraud, "store": store,
                    "prefer_gpu": decisions["explain"].target == "gpu"},
        "fraud": {"fraud_model": fraud, "store": store},
    }
    apps: dict[str, list[dict]] = {SUPPORT_APP: [], FRAUD_APP: []}
    for part, (name, _, app) in PARTS.items():
        apps[app].append({"name": name, **plan.scaling(part),
                          "ray_actor_options": actor_options(decisions[part], capacity),
                          "user_config": user_configs[part]})
    return {
        "proxy_location": "HeadOnly",
        "http_options": {"host": plan.http_host, "port": plan.http_port},
        "applications": [
            {"name": app, "route_prefix": ROUTES[app], "import_path": IMPORT_PATHS[app],
             "args": {}, "deployments": deployments}
            for app, deployments in apps.items()] + list(extra_apps),
    }


# the dashboard's REST API ----------------------------------------------------------------


def _request(method: str, url: str, body: Any = None, timeout: float = 30) -> Any:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
    token = os.environ.get(AUTH_TOKEN_ENV)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            text = response.read().decode()
    except urllib.error.HTTPError as error:
        detail = error.read().decode(errors="replace")[:2000]
        raise DeployError(f"{method} {url}: HTTP {error.code}: {detail}") from None
    return json.loads(text) if text.strip() else None


def serve_details(dashboard: str, timeout: float = 10) -> dict:
    """Serve's view of the cluster: applications, deployments, replicas and their nodes."""
    return _request("GET", dashboard.rstrip("/") + APPLICATIONS_PATH, timeout=timeout)


def _others(details: dict, ours: set[str]) -> list[dict]:
    """Applications someone else deployed from a config: the PUT replaces every application,
    so theirs are sent back unchanged."""
    out = []
    for name, app in (details.get("applications") or {}).items():
        config = app.get("deployed_app_config")
        if name not in ours and config:
            out.append(config)
    return out


def deploy(dashboard: str, config: dict, timeout_s: float = 600, poll_s: float = 0.5) -> dict:
    """PUT `config` (other applications kept) and wait until each of its applications runs
    with every deployment healthy; Serve's details then, or DeployError with its messages."""
    ours = {app["name"]: app for app in config["applications"]}
    current = serve_details(dashboard, timeout=60)
    body = {**config, "applications": config["applications"] + _others(current, ours)}
    sent = time.time()
    # The first PUT starts Serve's controller and proxy before it answers: minutes on a
    # loaded machine, so it gets the whole budget.
    _request("PUT", dashboard.rstrip("/") + APPLICATIONS_PATH, body, timeout=timeout_s)
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            details = serve_details(dashboard, timeout=30)
        except (OSError, DeployError) as error:  # a busy dashboard: ask again until the deadline
            if time.monotonic() > deadline:
                raise DeployError(f"Serve's status did not answer within {timeout_s:.0f}s: "
                                  f"{error}") from None
            time.sleep(poll_s)
            continue
        apps = details.get("applications") or {}
        problems = [f"{name}: {apps[name].get('message')}" for name in ours
                    if name in apps and apps[name].get("status") == "DEPLOY_FAILED"]
        if problems:
            raise DeployError("Serve could not deploy: " + "; ".join(problems))
        if all(_settled(apps.get(name), sent, app) for name, app in ours.items()):
            return details
        if time.monotonic() > deadline:
            states = {name: _state(apps.get(name)) for name in ours}
            raise DeployError(f"the applications did not come up within {timeout_s:.0f}s: {states}")
        time.sleep(poll_s)


def _settled(app: dict | None, sent: float, wanted: dict) -> bool:
    """The application runs this config: deployed after it was sent, each deployment's
    target holds the user_config sent (Serve marks a deployment UPDATING in the same step
    it takes a new target), and every deployment is healthy, so all replicas have it."""
    if not app or app.get("status") != "RUNNING":
        return False
    if (app.get("last_deployed_time_s") or 0) < sent - 1:
        return False  # still the state from before this config
    deployments = app.get("deployments") or {}
    for want in wanted.get("deployments") or []:
        have = deployments.get(want["name"], {}).get("deployment_config") or {}
        if "user_config" in want and have.get("user_config") != want["user_config"]:
            return False
    # UPSCALING / DOWNSCALING: running this config, the autoscaler moving between its bounds.
    return all(d.get("status") in RUNNING_STATUSES for d in deployments.values())


def _state(app: dict | None) -> str:
    if not app:
        return "absent"
    parts = [f"{n} {d.get('status')}" for n, d in (app.get("deployments") or {}).items()]
    return f"{app.get('status')} ({', '.join(parts)})"


def replicas(details: dict, apps: tuple[str, ...] = (SUPPORT_APP, FRAUD_APP)) -> list[dict]:
    """One row per replica of our applications: deployment, state, node, actor."""
    rows = []
    for app in apps:
        for name, deployment in ((details.get("applications") or {}).get(app, {})
                                 .get("deployments") or {}).items():
            for replica in deployment.get("replicas") or []:
                rows.append({"app": app, "deployment": name, "state": replica.get("state"),
                             "node": (replica.get("node_id") or "")[:8],
                             "node_ip": replica.get("node_ip"), "replica": replica.get("replica_id")})
    return rows


# a local Ray instance on demand ----------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _answers(dashboard: str) -> bool:
    try:
        _request("GET", dashboard.rstrip("/") + "/api/version", timeout=3)
        return True
    except (OSError, DeployError, ValueError):
        return False


def local_ray_env(environ: dict[str, str] | None = None) -> dict[str, str]:
    """The environment the on-demand local Ray starts in: ours (`SERVE_NODE_ENV`, values the
    user set win) and no usage stats."""
    return {**SERVE_NODE_ENV, **(os.environ if environ is None else environ),
            "RAY_USAGE_STATS_ENABLED": "0"}


def ensure_local_ray(home: Path, num_cpus: int | None = None) -> str:
    """The dashboard URL of this home's local Ray instance, started now if it is not running
    (`ray start --head` on 127.0.0.1; it outlives the step, so the service keeps serving).
    A machine with CUDA devices labels its node as the GPU pool, so the explainer gets one."""
    from unified_assets.extras import require
    from unified_assets.placement.probe import probe_cuda

    state_file = home / "serving" / "ray.json"
    if state_file.exists():
        state = json.loads(state_file.read_text())
        if _answers(state["dashboard"]):
            return str(state["dashboard"])
    require("ray", "ray", "Serving on a local Ray instance (no RAY_ADDRESS set)")
    gcs, port = _free_port(), _free_port()
    digest = hashlib.sha256(str(home.resolve()).encode()).hexdigest()[:8]
    # Short: Ray's socket paths under the temp dir are limited to ~100 characters.
    temp_dir = Path(tempfile.gettempdir()) / f"uai-serve-{digest}"
    ray = shutil.which("ray", path=str(Path(sys.executable).parent)) or "ray"
    devices, _ = probe_cuda()
    command = [ray, "start", "--head", "--node-ip-address=127.0.0.1", f"--port={gcs}",
               "--dashboard-host=127.0.0.1", f"--dashboard-port={port}", f"--temp-dir={temp_dir}",
               "--disable-usage-stats", f"--num-gpus={len(devices)}"]
    if num_cpus:
        command.append(f"--num-cpus={num_cpus}")
    if devices:
        command.append(f"--labels={POOL_LABEL}={GPU_NODE_POOL}")
    # Its own process group: every process of this instance (daemons, replicas) can be
    # stopped together (`stop_local_ray`), and no other Ray on the machine with it.
    starter = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, start_new_session=True,
                               env=local_ray_env())
    output, _ = starter.communicate(timeout=300)
    if starter.returncode:
        raise DeployError(f"could not start a local Ray instance ({' '.join(command)}): "
                          f"{output.strip()[-1500:]}")
    dashboard = f"http://127.0.0.1:{port}"
    state_file.parent.mkdir(parents=True, exist_ok=True)
    state_file.write_text(json.dumps({"dashboard": dashboard, "gcs": f"127.0.0.1:{gcs}",
                                      "temp_dir": str(temp_dir), "pgid": starter.pid}))
    deadline = time.monotonic() + 60
    while not _answers(dashboard):
        if time.monotonic() > deadline:
            raise DeployError(f"the local Ray instance's dashboard {dashboard} does not answer")
        time.sleep(0.5)
    return dashboard


def _ray_group(pgid: int, temp_dir: str) -> bool:
    """Process group `pgid` is still this home's Ray instance: one of its processes names the
    instance's temp dir on its command line (Ray's daemons do), so a group id reused by
    something else since is never signalled. Without /proc, the record is trusted."""
    proc = Path("/proc")
    if not proc.is_dir():
        return True
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if os.getpgid(int(entry.name)) == pgid and \
                    temp_dir.encode() in (entry / "cmdline").read_bytes():
                return True
        except OSError:  # ended while we looked, or not ours to read
            continue
    return False


def stop_local_ray(home: Path) -> str | bool:
    """Stop the local Ray instance `ensure_local_ray` started for this home (its process
    group only) and forget it: "stopped", or "gone" when it was not running any more; False
    when none is recorded."""
    import signal

    state_file = home / "serving" / "ray.json"
    if not state_file.exists():
        return False
    state = json.loads(state_file.read_text())
    outcome = "gone"
    with contextlib.suppress(ProcessLookupError, KeyError):
        pgid = int(state["pgid"])
        if not _ray_group(pgid, str(state["temp_dir"])):
            raise ProcessLookupError  # gone (a stale record, e.g. after a reboot): kill nothing
        outcome = "stopped"
        os.killpg(pgid, signal.SIGTERM)
        # Ray's daemons exit on SIGTERM, mostly: gcs_server has been seen to say it stops
        # and live on for minutes. What is left after the grace is killed.
        deadline = time.monotonic() + STOP_GRACE_S
        while time.monotonic() < deadline:
            os.killpg(pgid, 0)  # ProcessLookupError once the whole group is gone
            time.sleep(0.2)
        os.killpg(pgid, signal.SIGKILL)
    state_file.unlink()
    shutil.rmtree(state.get("temp_dir", ""), ignore_errors=True)
    return outcome
