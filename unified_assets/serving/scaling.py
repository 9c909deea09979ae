"""Scaling on traffic, as the `serving_scaling` sensor sees it: each deployment's replicas
from Serve's state (the dashboard's REST API, no driver), the traffic from the request
audit, and the changes between two readings. Plain data and urllib: the code location
imports this, never ray."""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from unified_assets.serving.profiles import PARTS

TRAFFIC_WINDOW_S = 60.0
AUDIT_TAIL_BYTES = 4 << 20  # the audit's newest lines: a minute of traffic fits many times
FAILURE_TRIGGERS = {"REPLICA_STARTUP_FAILED", "DEPLOYMENT_ACTOR_FAILED", "HEALTH_CHECK_FAILED",
                    "INTERNAL_ERROR"}


@dataclass(frozen=True)
class DeploymentScale:
    """One deployment's replicas as Serve reports them."""

    deployment: str
    running: int  # replicas in state RUNNING
    target: int  # target_num_replicas: what Serve (its autoscaler) is heading for
    status: str  # HEALTHY, UPSCALING, DOWNSCALING, UPDATING, ...
    trigger: str  # status_trigger: why it is in that status (AUTOSCALING, UPSCALE_COMPLETED, ...)
    newest_replica_started: float | None  # unix time
    autoscaling: dict | None  # the autoscaling_config it runs with (None: fixed replicas)


def read_scales(details: dict) -> dict[str, DeploymentScale]:
    """Each workflow deployment's replicas from Serve's details (GET /api/serve/applications/)."""
    ours = {name: app for name, _, app in PARTS.values()}
    apps = details.get("applications") or {}
    out = {}
    for name, app in ours.items():
        deployment = ((apps.get(app) or {}).get("deployments") or {}).get(name)
        if deployment is None:
            continue
        replicas = deployment.get("replicas") or []
        running = [r for r in replicas if r.get("state") == "RUNNING"]
        started = [float(r["start_time_s"]) for r in running if r.get("start_time_s")]
        config = deployment.get("deployment_config") or {}
        out[name] = DeploymentScale(
            deployment=name, running=len(running),
            target=int(deployment.get("target_num_replicas") or 0),
            status=str(deployment.get("status") or ""),
            trigger=str(deployment.get("status_trigger") or ""),
            newest_replica_started=max(started) if started else None,
            autoscaling=config.get("autoscaling_config") or None)
    return out


def _percentile(values: list[float], share: float) -> float:
    """Nearest-rank percentile (share in [0, 1]) of a non-empty list."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), math.ceil(share * len(ordered) - 1e-9)))
    return ordered[rank - 1]


def traffic(audit_path: str | Path, now: float) -> dict:
    """Requests answered in the last minute (from the audit's newest lines), per second, and
    their p50 / p99 latency in ms (None without requests)."""
    window_s = TRAFFIC_WINDOW_S
    path = Path(audit_path)
    latencies: list[float] = []
    if path.exists():
        with path.open("rb") as handle:
            size = handle.seek(0, os.SEEK_END)
            handle.seek(max(0, size - AUDIT_TAIL_BYTES))
            tail = handle.read().decode(errors="replace").splitlines()
        if size > AUDIT_TAIL_BYTES:
            tail = tail[1:]  # the first line read is cut
        since = now - window_s
        for line in tail:
            try:
                record = json.loads(line)
                at = datetime.fromisoformat(record["at"])
                latency = float(record["latency_ms"])
            except (ValueError, KeyError, TypeError):
                continue
            if at.tzinfo is None:
                at = at.replace(tzinfo=UTC)
            if at.timestamp() >= since:
                latencies.append(latency)
    return {
        "requests_last_minute": len(latencies),
        "requests_per_s": round(len(latencies) / window_s, 3),
        "p50_latency_ms": round(_percentile(latencies, 0.5), 1) if latencies else None,
        "p99_latency_ms": round(_percentile(latencies, 0.99), 1) if latencies else None,
    }


@dataclass(frozen=True)
class ScalingEvent:
    """A change in a deployment's running replicas between two readings of Serve's state."""

    deployment: str
    before: int
    after: int
    scale: DeploymentScale

    @property
    def direction(self) -> str:
        return "up" if self.after > self.before else "down"

    def why(self, load: dict) -> str:
        rule, serve = self.scale.autoscaling, f"Serve: {self.scale.status}, {self.scale.trigger}"
        moved = f"{self.deployment} {self.before} -> {self.after} replicas"
        if self.scale.status == "UPDATING" or self.scale.trigger.startswith("CONFIG_UPDATE"):
            return f"{moved}: a new deployment of `serving` ({serve})"
        if self.scale.trigger in FAILURE_TRIGGERS:
            return f"{moved}: a replica failed ({serve})"
        if not rule:
            return f"{moved}: fixed replicas, changed by a deployment or a failure ({serve})"
        figures = f"{load.get('requests_last_minute', 0)} requests in the last minute"
        if load.get("p99_latency_ms") is not None:
            figures += f", p50 {load['p50_latency_ms']} ms, p99 {load['p99_latency_ms']} ms"
        direction = "above" if self.direction == "up" else "below"
        return (f"{self.deployment} scaled {self.direction} {self.before} -> {self.after} "
                f"(bounds {rule.get('min_replicas')}..{rule.get('max_replicas')}): ongoing "
                f"requests per replica held {direction} the target "
                f"{rule.get('target_ongoing_requests')} for "
                f"{rule.get('upscale_delay_s' if self.direction == 'up' else 'downscale_delay_s')} s; "
                f"{figures} ({serve})")


def changes(seen: dict[str, int], now: dict[str, DeploymentScale]) -> list[ScalingEvent]:
    """Deployments whose running replicas differ from `seen` (the last reading); a
    deployment not seen before is a baseline, not a change."""
    return [ScalingEvent(name, seen[name], scale.running, scale)
            for name, scale in now.items() if name in seen and seen[name] != scale.running]
