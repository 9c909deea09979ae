"""Complete, valid policies for tests: the shipped policy with a few values laid over it.

A partial policy file is refused at load (a missing section never means "no gate"), so
tests that need other rules write the shipped policy with their overrides.
"""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

import yaml

from unified_assets.policy import DEFAULT_POLICY_PATH


def shipped_policy() -> dict:
    return yaml.safe_load(DEFAULT_POLICY_PATH.read_text())


def overlay(base: dict, overrides: dict) -> dict:
    """`overrides` laid over `base`: mappings merge key by key, any other value replaces."""
    merged = copy.deepcopy(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = overlay(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def write_policy(folder: Path, overrides: dict | None = None, name: str = "policy.yaml",
                 base: dict | None = None) -> Path:
    """`base` (default: the shipped policy) with `overrides`, as a file in `folder`."""
    path = folder / name
    path.write_text(yaml.safe_dump(overlay(shipped_policy() if base is None else base,
                                           overrides or {})))
    return path


def with_policy(settings, folder: Path, overrides: dict | None = None, name: str = "policy.yaml",
                base: dict | None = None):
    """`settings` pointing at the shipped policy (or `base`) with `overrides`."""
    return dataclasses.replace(settings,
                               policy_path=str(write_policy(folder, overrides, name, base)))
