"""Recorded Kubernetes API responses (fixtures/) for the placement tests."""

from __future__ import annotations

import pytest

from tests.unified_assets.placement.helpers import load_fixture


@pytest.fixture
def node_list() -> dict:
    return load_fixture("nodes.json")


@pytest.fixture
def pod_list() -> dict:
    return load_fixture("pods.json")
