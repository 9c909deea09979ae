"""Ray capacity: the cluster's nodes (pool label, liveness, logical GPUs and CPUs) and its jobs,
read from the dashboard's HTTP APIs only (state API `list_nodes`, job API `list_jobs`), so the
planner needs no `ray.init` connection to the cluster.

Free GPUs and CPUs per node are the totals minus what the running Ray jobs started by this
code location asked for (the request is in each job's metadata under `REQUEST_METADATA`);
Ray holds a job PENDING until its request fits, so pending jobs are the queue. Work that is
not a Ray job of ours (a Ray Serve replica, someone's tasks) is not counted: Ray still
enforces the request, the snapshot only decides where to ask. The parsers take plain dicts
so recorded answers and live ones go through the same code. Plain HTTP (urllib): importing
`ray` costs seconds, and the step processes read their own job record here too."""

from __future__ import annotations

import json
import urllib.parse
import urllib.request
from collections.abc import Iterable, Mapping
from typing import Any

from unified_assets.compute import POOL_LABEL, RAY_ACCELERATOR_PREFIX
from unified_assets.placement.snapshot import RayCapacity, RayNode

REQUEST_METADATA = "unified-ai/ray-request"  # Ray job metadata: the request as JSON
UNLABELLED_POOL = "(no pool label)"
HOLDING_STATUSES = frozenset({"RUNNING"})
PENDING_STATUSES = frozenset({"PENDING"})


def job_request(job: Mapping[str, Any]) -> dict[str, float]:
    """The CPUs and GPUs a job asked for, from our metadata (0 for jobs not started by us)."""
    raw = (job.get("metadata") or {}).get(REQUEST_METADATA)
    try:
        request = json.loads(raw) if raw else {}
    except ValueError:
        request = {}
    return {"num_cpus": float(request.get("num_cpus") or 0),
            "num_gpus": float(request.get("num_gpus") or 0)}


def _status(job: Mapping[str, Any]) -> str:
    status = job.get("status")
    return str(getattr(status, "value", status))


def parse_ray_node(node: Mapping[str, Any], held: Mapping[str, float] | None = None) -> RayNode:
    """A `RayNode` from the state API's node record; `held`: CPUs and GPUs our running jobs
    hold on it."""
    labels = node.get("labels") or {}
    total = node.get("resources_total") or {}
    held = held or {}
    accelerator = labels.get("ray.io/accelerator-type") or next(
        (key[len(RAY_ACCELERATOR_PREFIX):] for key in total if key.startswith(RAY_ACCELERATOR_PREFIX)),
        None)
    gpus, cpus = float(total.get("GPU", 0)), float(total.get("CPU", 0))
    alive = node.get("state") == "ALIVE"
    return RayNode(
        node_id=node.get("node_id", "?"), pool=labels.get(POOL_LABEL, UNLABELLED_POOL),
        alive=alive, gpus_total=gpus, cpus_total=cpus,
        gpus_free=max(0.0, gpus - held.get("num_gpus", 0)) if alive else 0.0,
        cpus_free=max(0.0, cpus - held.get("num_cpus", 0)) if alive else 0.0,
        accelerator=accelerator, is_head=bool(node.get("is_head_node")))


def parse_ray_capacity(nodes: Iterable[Mapping[str, Any]], jobs: Iterable[Mapping[str, Any]] = (),
                       address: str = "") -> RayCapacity:
    """A `RayCapacity` from node records and job records (dicts, as the APIs return them)."""
    held: dict[str, dict[str, float]] = {}
    pending, pending_gpus = 0, 0.0
    for job in jobs:
        status, request = _status(job), job_request(job)
        if status in PENDING_STATUSES:
            pending += 1
            pending_gpus += request["num_gpus"]
        elif status in HOLDING_STATUSES and job.get("driver_node_id"):
            row = held.setdefault(job["driver_node_id"], {"num_cpus": 0.0, "num_gpus": 0.0})
            row["num_cpus"] += request["num_cpus"]
            row["num_gpus"] += request["num_gpus"]
    parsed = sorted((parse_ray_node(n, held.get(n.get("node_id", ""))) for n in nodes),
                    key=lambda n: (not n.alive, n.pool, n.node_id))
    return RayCapacity(nodes=tuple(parsed), pending_jobs=pending, pending_gpus=pending_gpus,
                       address=address)


def dashboard_json(address: str, path: str, timeout: float = 10) -> Any:
    """GET a JSON document from the Ray dashboard at `address` (http://host:8265)."""
    with urllib.request.urlopen(address.rstrip("/") + path, timeout=timeout) as response:
        return json.loads(response.read())


def list_ray_nodes(address: str, timeout: float = 10) -> list[dict[str, Any]]:
    """Every node the state API knows (dead ones too: a lost node is news)."""
    body = dashboard_json(address, "/api/v0/nodes?detail=1&limit=10000", timeout)
    return list(body["data"]["result"]["result"])


def get_ray_node(address: str, node_id: str, timeout: float = 10) -> dict[str, Any] | None:
    query = urllib.parse.urlencode({"detail": 1, "filter_keys": "node_id",
                                    "filter_predicates": "=", "filter_values": node_id})
    rows = dashboard_json(address, f"/api/v0/nodes?{query}", timeout)["data"]["result"]["result"]
    return rows[0] if rows else None


def list_ray_jobs(address: str, timeout: float = 10) -> list[dict[str, Any]]:
    return list(dashboard_json(address, "/api/jobs/", timeout))


def get_ray_job(address: str, submission_id: str, timeout: float = 10) -> dict[str, Any]:
    return dict(dashboard_json(address, f"/api/jobs/{urllib.parse.quote(submission_id)}", timeout))


def fetch_ray_capacity(address: str, timeout: float = 10) -> RayCapacity:
    """Nodes and jobs of the Ray cluster whose dashboard is at `address` (http://host:8265)."""
    return parse_ray_capacity(list_ray_nodes(address, timeout), list_ray_jobs(address, timeout),
                              address)
