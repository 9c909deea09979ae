"""Test instances with the local instance's event log (deploy/local/dagster.yaml), so the
suite's runs exercise the storage `dagster dev` uses."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

LOCAL_INSTANCE = Path(__file__).resolve().parents[1] / "deploy" / "local" / "dagster.yaml"
LOCAL_EVENT_LOG: dict[str, Any] = {
    "event_log_storage": yaml.safe_load(LOCAL_INSTANCE.read_text())["event_log_storage"]}
