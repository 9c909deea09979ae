"""Test instances with the local instance's event log and compute logs
(deploy/local/dagster.yaml), so the suite's runs exercise the storage `dagster dev` uses."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

LOCAL_INSTANCE = Path(__file__).resolve().parents[1] / "deploy" / "local" / "dagster.yaml"
LOCAL_EVENT_LOG: dict[str, Any] = {
    "event_log_storage": yaml.safe_load(LOCAL_INSTANCE.read_text())["event_log_storage"]}
# The event log and the compute logs of the local instance (its storage beyond Dagster's
# defaults), for instances the suite runs lifecycles on.
LOCAL_STORAGE: dict[str, Any] = LOCAL_EVENT_LOG | {
    "compute_logs": yaml.safe_load(LOCAL_INSTANCE.read_text())["compute_logs"]}
