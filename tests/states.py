"""Expensive starting states (an ingested window, a first champion) built once per session
(per xdist worker) and restored per test, as dagster's project_fully_featured shares its setup
across tests. The `states` fixture (tests/conftest.py) holds them."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dagster as dg

from tests.instances import LOCAL_STORAGE
from unified_assets.settings import Settings

Build = Callable[[Settings, dg.DagsterInstance, Path, Any], tuple[Settings, Any]]


@dataclass(frozen=True)
class Recipe:
    """How to build a starting state: `build(settings, instance, folder, base_value)` works on
    a fresh home (or on `base`'s state restored) and returns the settings to use (e.g. with a
    policy written into `folder`) and a value the tests read (a summary, a run result)."""

    name: str
    build: Build
    base: Recipe | None = None


@dataclass
class State:
    settings: Settings
    instance: dg.DagsterInstance
    value: Any


class States:
    """Starting states built once per session (per xdist worker) and restored per test.

    A state is built and used in one fixed folder (`work`): every absolute path recorded in
    it (MLflow's artifact locations, the Dagster instance's storage, the IO manager's folder)
    stays valid when a copy of it is put back there. One test uses one state at a time.
    """

    def __init__(self, root: Path, mlflow_db: Path):
        self.root, self.mlflow_db = root, mlflow_db
        self.work = root / "work"
        self.built: dict[str, tuple[Settings, Any]] = {}

    def _saved(self, name: str) -> Path:
        return self.root / "saved" / name.replace("/", "_").replace(":", "_")

    def _restore(self, name: str) -> None:
        if self.work.exists():
            shutil.rmtree(self.work)
        shutil.copytree(self._saved(name), self.work, symlinks=True)

    def _build(self, recipe: Recipe) -> None:
        if recipe.base is not None:
            if recipe.base.name not in self.built:
                self._build(recipe.base)
            settings, prior = self.built[recipe.base.name]
            self._restore(recipe.base.name)
        else:
            if self.work.exists():
                shutil.rmtree(self.work)
            home = self.work / "home"
            home.mkdir(parents=True)
            shutil.copy(self.mlflow_db, home / "mlflow.db")
            settings, prior = Settings(deployment="local", home=home, dataset_spec=None), None
        (self.work / "dagster").mkdir(exist_ok=True)
        with dg.instance_for_test(temp_dir=str(self.work / "dagster"),
                                 overrides=LOCAL_STORAGE) as instance:
            settings, value = recipe.build(settings, instance, self.work, prior)
        shutil.copytree(self.work, self._saved(recipe.name), symlinks=True)
        self.built[recipe.name] = (settings, value)

    @contextmanager
    def use(self, recipe: Recipe) -> Iterator[State]:
        if recipe.name not in self.built:
            self._build(recipe)
        settings, value = self.built[recipe.name]
        self._restore(recipe.name)
        with dg.instance_for_test(temp_dir=str(self.work / "dagster"),
                                 overrides=LOCAL_STORAGE) as instance:
            yield State(settings, instance, value)




def batches_ingested(batches: int, rows: int) -> Build:
    """A build step: `batches` generated batches of `rows` landed and ingested."""

    def build(settings: Settings, instance: dg.DagsterInstance, _folder: Path, _base: Any):
        from unified_assets.definitions import build_definitions
        from unified_assets.lifecycle import ingest_landed
        from unified_assets.ml.generator import write_batches

        write_batches(settings.landing_dir, batches=batches, rows=rows)
        ingest_landed(build_definitions(settings), instance)
        return settings, None

    return build


def first_champion(batches: int, rows: int) -> Build:
    """A build step: batches ingested as `batches_ingested` does, then a first train-evaluate-promote
    that must succeed (its result is the value)."""
    ingest = batches_ingested(batches, rows)

    def build(settings: Settings, instance: dg.DagsterInstance, folder: Path, base: Any):
        from unified_assets.definitions import build_definitions
        from unified_assets.lifecycle import train_evaluate_promote

        ingest(settings, instance, folder, base)
        result = train_evaluate_promote(build_definitions(settings), instance)
        assert result.success, [e.message for e in result.all_events if e.is_failure]
        return settings, result

    return build
