"""Shared fixtures: a real MLflow sqlite store (schema created once per session and copied
per test, since MLflow's migrations take seconds), real folders, a test Dagster instance, and
`states`: expensive starting points (an ingested window, a first champion) built once per
session and restored per test, as dagster's project_fully_featured shares its setup."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pytest

from tests.instances import LOCAL_STORAGE
from tests.states import States
from unified_assets.settings import Settings

# A state's MLflow store is replaced on disk between tests at the same path: no pooled
# connection may keep reading the file it replaced (MLflow caches one engine per URI).
os.environ.setdefault("MLFLOW_SQLALCHEMYSTORE_POOLCLASS", "NullPool")
# One thread for torch and scikit-learn (OpenMP, read when they first load; subprocesses
# inherit it): the xdist workers are the parallelism, and on 2 busy cores OpenMP's spinning
# threads made histogram boosting and torch training 2-3x slower (measured), never faster.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")


# The longest test files, longest first (minutes each on 2 cores: real stacks, clusters and
# browsers). pytest-xdist's loadfile hands files to its two workers in collection order, so
# starting these first balances the workers (longest first); left last, two of them could
# end up one after the other on one worker while the other sits idle.
LONG_FIRST = ("tests/stack/test_production_stack.py", "tests/ray/test_ray_runtime.py",
              "tests/browser/", "tests/serving/test_support_workflow.py",
              "tests/ray/test_ray_cluster_script.py", "tests/scenario/")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    def rank(item: pytest.Item) -> int:
        path = Path(str(item.path)).as_posix()
        return next((i for i, long in enumerate(LONG_FIRST) if f"/{long}" in path or
                     path.startswith(long)), len(LONG_FIRST))

    items.sort(key=rank)  # stable: each file's tests keep their order


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "slow: a full lifecycle (real training, MLflow, Dagster runs); the README's "
        "test command runs these too (`-m 'not slow'` for a quick pass)")
    # pytest-xdist's mark, also known without it (a plain run ignores it).
    config.addinivalue_line("markers", "xdist_group(name): run these tests on one xdist worker")
    config.addinivalue_line("markers", "independent: a stack test that runs even after an earlier "
                            "one on the same stack failed (tests/stack/conftest.py)")


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
    # The event log and compute logs `dagster dev` uses (deploy/local/dagster.yaml), so the
    # suite's runs go through them.
    with dg.instance_for_test(overrides=LOCAL_STORAGE) as test_instance:
        yield test_instance


@pytest.fixture(scope="session")
def states(tmp_path_factory: pytest.TempPathFactory, mlflow_db_template: Path) -> States:
    return States(tmp_path_factory.mktemp("states"), mlflow_db_template)
