"""Shared fixtures: a real MLflow sqlite store (schema created once per session and copied
per test, since MLflow's migrations take seconds), real folders, a test Dagster instance."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pytest

from unified_assets.settings import Settings


@pytest.fixture(scope="session")
def mlflow_db_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from mlflow import MlflowClient

    folder = tmp_path_factory.mktemp("mlflow-template")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    client.search_experiments()
    return folder / "mlflow.db"


@pytest.fixture
def settings(tmp_path: Path, mlflow_db_template: Path) -> Settings:
    home = tmp_path / "home"
    home.mkdir()
    shutil.copy(mlflow_db_template, home / "mlflow.db")
    return Settings(deployment="local", home=home, dataset_spec=None)


@pytest.fixture
def instance() -> Iterator[dg.DagsterInstance]:
    with dg.instance_for_test() as test_instance:
        yield test_instance
