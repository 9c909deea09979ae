"""Live traffic follows the champion in the run that changes it.

A promotion or a rollback (the `production_model` asset) calls `follow_champion` after the
ledger's change is done: when `serving` has been deployed, the running Serve applications get
the new fraud-model version in place (the deployments' `user_config`, which Serve applies to
the running replicas through `reconfigure`, without restarting them), and the change is
recorded as an observation on `serving`. Nothing else in the deployment changes: the config
sent is the one Serve runs (its `deployed_app_config`), with that one version swapped.

HTTP to the Ray dashboard only (no ray import): every step process imports this module."""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass

import dagster as dg

from unified_assets.serving.deploy import DeployError, deploy, serve_details
from unified_assets.serving.profiles import FRAUD_APP, SUPPORT_APP

SERVING_KEY = dg.AssetKey("serving")
CHAMPION_VERSION = "champion_version"  # metadata key on `serving`: the version it serves
DASHBOARD = "ray_dashboard"
FOLLOW_TIMEOUT_S = 180.0


@dataclass(frozen=True)
class Served:
    """What `serving` last recorded: the version it serves and where."""

    version: str | None
    dashboard: str | None


@dataclass(frozen=True)
class Followed:
    """What happened to live traffic: `status` is not_deployed, already, updated or failed."""

    status: str
    message: str
    previous: str | None = None
    seconds: float | None = None


def served(instance: dg.DagsterInstance) -> Served | None:
    """The version `serving` serves, from its latest materialization or the latest in-place
    update recorded after it (an observation with `champion_version`); None if never deployed."""
    latest = instance.fetch_materializations(SERVING_KEY, limit=1).records
    if not latest or latest[0].asset_materialization is None:
        return None
    metadata = latest[0].asset_materialization.metadata
    version, dashboard = metadata.get(CHAMPION_VERSION), metadata.get(DASHBOARD)
    result = Served(str(version.value) if version is not None else None,
                    str(dashboard.value).rstrip("/") if dashboard is not None else None)
    since = dg.AssetRecordsFilter(asset_key=SERVING_KEY, after_storage_id=latest[0].storage_id)
    for record in instance.fetch_observations(since, limit=100).records:  # newest first
        observed = record.asset_observation  # scaling observations carry no version
        entry = observed.metadata.get(CHAMPION_VERSION) if observed else None
        if entry is not None:
            return Served(str(entry.value), result.dashboard)
    return result


def swapped_config(details: dict, model_name: str, version: str) -> tuple[dict, int]:
    """The config Serve runs our applications with (from its details; `deploy` keeps any
    other application as it is), with `model_name`'s version set in every deployment that
    serves it; and how many deployments that is."""
    applications, changed = [], 0
    for name, app in (details.get("applications") or {}).items():
        deployed = app.get("deployed_app_config") if name in (SUPPORT_APP, FRAUD_APP) else None
        if not deployed:
            continue
        deployed = copy.deepcopy(deployed)
        for deployment in deployed.get("deployments") or []:
            model = (deployment.get("user_config") or {}).get("fraud_model")
            if isinstance(model, dict) and model.get("name") == model_name:
                model["version"] = version
                changed += 1
        applications.append(deployed)
    config = {"applications": applications}
    for key in ("proxy_location", "http_options"):
        if details.get(key) is not None:
            config[key] = details[key]
    return config, changed


def follow_champion(instance: dg.DagsterInstance, model_name: str, champion: str,
                    timeout_s: float = FOLLOW_TIMEOUT_S) -> Followed:
    """Put `champion` into the running Serve applications when `serving` was deployed and
    serves another version; record it on `serving`. Never raises: the caller decides what a
    failure means (the ledger's change is already done)."""
    current = served(instance)
    if current is None:
        return Followed("not_deployed", "serving was never deployed: no live traffic to move")
    if current.version == champion:
        return Followed("already", f"serving already serves v{champion}", current.version)
    if not current.dashboard:
        return Followed("failed", "serving's last deployment names no Ray dashboard",
                        current.version)
    started = time.monotonic()
    try:
        config, changed = swapped_config(serve_details(current.dashboard, timeout=30),
                                         model_name, champion)
        if not changed:
            raise DeployError(f"no running deployment serves {model_name} at "
                              f"{current.dashboard}")
        deploy(current.dashboard, config, timeout_s=timeout_s)
    except (DeployError, OSError, ValueError) as error:
        return Followed("failed", f"live traffic still on v{current.version}: {error}",
                        current.version)
    seconds = time.monotonic() - started
    return Followed("updated", f"live traffic moved from v{current.version} to v{champion} in "
                    f"place ({changed} deployments, {seconds:.1f} s)", current.version, seconds)


def observation(model_name: str, champion: str, followed: Followed, run_id: str
                ) -> dg.AssetObservation:
    """The in-place update as an observation on `serving` (the UI's serving timeline)."""
    return dg.AssetObservation(asset_key=SERVING_KEY, metadata={
        CHAMPION_VERSION: dg.MetadataValue.text(champion),
        "model": dg.MetadataValue.text(model_name),
        "previous_version": dg.MetadataValue.text(str(followed.previous)),
        "change": dg.MetadataValue.text(followed.message),
        "seconds": dg.MetadataValue.float(round(followed.seconds or 0.0, 2)),
        "changed_by_run": dg.MetadataValue.text(run_id),
    })
