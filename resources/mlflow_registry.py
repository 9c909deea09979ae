"""MLflow tracking and model registry behind one resource.

dagster-mlflow's `mlflow_tracking` shares one MLflow run per Dagster run through
mlflow's global active-run state and imports mlflow when the code location loads. We
need one MLflow run per candidate (two candidates train in one Dagster run) and lean
imports, so this resource uses `MlflowClient` directly and keeps dagster-mlflow's
tagging convention (`dagster_run_id`) so runs are found the same way.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
import threading
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import urlencode

import dagster as dg

# No usage data leaves the machine: Dagster's telemetry is off in every instance config, and
# MLflow's (read when MLflow is imported, always after this module) is off unless the user set
# it. Its background thread also held up one step per run by about 0.6 s (bench/RESULTS.md).
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

CHAMPION_ALIAS = "champion"
# MLflow's error codes for an unknown model, version or alias (a missing alias is reported
# as an invalid parameter); every other error means the registry could not answer.
_NOT_FOUND = ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE")
CHALLENGER_ALIAS = "challenger"
TRAINING_BATCHES_TAG = "training_batches"  # on a version: the batches it was trained on
# Types inside our own HistGradientBoosting pipeline that MLflow's skops format asks us to
# vouch for; we only ever load files this project wrote.
SKOPS_TRUSTED_TYPES = [
    "functools.partial",
    "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor",
    "sklearn.utils.validation.check_array",
]


# What a client's first call imports: MLflow, then its SQLAlchemy stores on first use.
CLIENT_MODULES = ("mlflow", "mlflow.store.tracking.sqlalchemy_store",
                  "mlflow.store.model_registry.sqlalchemy_store")
# MLflow's own warm-up of its map of installed distributions, as `module:function` for the
# preloading servers (resources/mlflow_environment.py says why).
DISTRIBUTIONS_WARMUP = "mlflow.utils.requirements_utils:_init_packages_to_modules_map"
_IMPORTS_THREAD = "unified-ai-mlflow-imports"
_imports_lock = threading.Lock()


def import_client_in_background() -> None:
    """Import what a registry client needs on a background thread, once per process.

    For a long-lived process that asks the registry only now and then (the code server,
    evaluating sensors): its first question then takes milliseconds, not the 2.6-4 s of these
    imports, which every other sensor's tick would wait behind. A failed import is left for
    the first real call to raise."""
    with _imports_lock:
        if all(name in sys.modules for name in CLIENT_MODULES) or any(
                thread.name == _IMPORTS_THREAD for thread in threading.enumerate()):
            return

        def run() -> None:
            for name in CLIENT_MODULES:
                try:
                    importlib.import_module(name)
                except Exception as error:  # noqa: BLE001 - the caller's own import raises it
                    logging.getLogger(__name__).debug("not imported: %s: %s", name, error)
                    return

        threading.Thread(target=run, name=_IMPORTS_THREAD, daemon=True).start()


@dataclass(frozen=True)
class RegisteredCandidate:
    """A trained model as registered: what evaluation and promotion take as input."""

    family: str
    model_name: str
    version: str
    run_id: str
    model_uri: str
    tracking_uri: str

    @property
    def registry_uri(self) -> str:
        return f"models:/{self.model_name}/{self.version}"


@dataclass(frozen=True)
class ArtifactLink:
    """Where a person opens an artifact of an MLflow run over HTTP.

    `page` is the MLflow UI's run page with the artifact open: it renders HTML reports (in a
    sandboxed frame) and JSON. `file` is the artifact itself (`/get-artifact`, HTTP 200 with
    the bytes; MLflow sends it as an attachment, so a browser downloads it)."""

    run_id: str
    experiment_id: str
    path: str
    page: str
    file: str
    run_page: str


class MlflowRegistry(dg.ConfigurableResource):
    """MLflow server or local sqlite store; `artifact_location` is used for new experiments.

    `ui_url` is where people open MLflow in a browser, for report links; unset, it is
    UNIFIED_AI_MLFLOW_UI_URL, else the tracking server itself when it is one (http), else the
    local MLflow UI that scripts/dev.sh starts."""

    tracking_uri: str
    artifact_location: str | None = None
    experiment_name: str = "unified-ai"
    ui_url: str | None = None

    def _mlflow(self):
        import mlflow

        mlflow.set_tracking_uri(self.tracking_uri)
        mlflow.set_registry_uri(self.tracking_uri)
        return mlflow

    def client(self):
        from mlflow import MlflowClient

        return MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self.tracking_uri)

    def _experiment_id(self, name: str | None = None) -> str:
        name = name or self.experiment_name
        client = self.client()
        existing = client.get_experiment_by_name(name)
        if existing is not None:
            return existing.experiment_id
        try:
            return client.create_experiment(name, artifact_location=self.artifact_location)
        except Exception:  # noqa: BLE001 - another step created it first
            existing = client.get_experiment_by_name(name)
            if existing is None:
                raise
            return existing.experiment_id

    # ------------------------------------------------------------ reports for people

    def ui_base(self) -> str:
        """The MLflow UI's base URL for links (see the class docstring), without a final '/'."""
        if self.ui_url:
            return self.ui_url.rstrip("/")
        from unified_assets.settings import LOCAL_MLFLOW_UI_URL, load_settings

        configured = load_settings().mlflow_ui_url
        if configured:
            return configured
        if self.tracking_uri.startswith(("http://", "https://")):
            return self.tracking_uri.rstrip("/")
        return LOCAL_MLFLOW_UI_URL

    def artifact_link(self, run_id: str, experiment_id: str, path: str) -> ArtifactLink:
        base = self.ui_base()
        run_page = f"{base}/#/experiments/{experiment_id}/runs/{run_id}"
        return ArtifactLink(
            run_id=run_id, experiment_id=experiment_id, path=path,
            page=f"{run_page}/artifacts/{path}",
            file=f"{base}/get-artifact?{urlencode({'path': path, 'run_uuid': run_id})}",
            run_page=run_page,
        )

    def log_reports(self, run_id: str, folder: str,
                    files: dict[str, str | bytes]) -> dict[str, ArtifactLink]:
        """Upload `files` (name -> content) under `folder` of an existing (even finished) run,
        in one call; their links by name. The tracking server stores them where its artifact
        root says, so the links work wherever the MLflow UI runs, pods included."""
        import tempfile
        from pathlib import Path

        client = self.client()
        experiment_id = client.get_run(run_id).info.experiment_id
        with tempfile.TemporaryDirectory(prefix="unified-ai-reports-") as tmp:
            for name, content in files.items():
                target = Path(tmp, name)
                if isinstance(content, str):
                    target.write_text(content, encoding="utf-8")
                else:
                    target.write_bytes(content)
            client.log_artifacts(run_id, tmp, artifact_path=folder)
        return {name: self.artifact_link(run_id, experiment_id, f"{folder}/{name}")
                for name in files}

    def log_report_run(self, *, experiment_suffix: str, run_name: str, tags: dict[str, str],
                       metrics: dict[str, float], folder: str,
                       files: dict[str, str | bytes]) -> dict[str, ArtifactLink]:
        """A finished MLflow run of its own in the `<experiment>-<suffix>` experiment holding
        `files` (reports not tied to a model run, e.g. drift); the run ends FAILED and the
        error is raised when an upload fails."""
        client = self.client()
        experiment_id = self._experiment_id(f"{self.experiment_name}-{experiment_suffix}")
        run_id = client.create_run(experiment_id, run_name=run_name, tags=tags).info.run_id
        try:
            for key, value in metrics.items():
                client.log_metric(run_id, key, value)
            links = self.log_reports(run_id, folder, files)
        except Exception:
            client.set_terminated(run_id, status="FAILED")
            raise
        client.set_terminated(run_id, status="FINISHED")
        return links

    def log_candidate(
        self,
        *,
        model_name: str,
        family: str,
        flavor: Literal["sklearn", "pyfunc"],
        model: Any,
        params: dict[str, Any],
        metrics: dict[str, float],
        tags: dict[str, str],
        pip_requirements: list[str],
    ) -> RegisteredCandidate:
        """One MLflow run for the candidate: params, metrics, the model, a registry version."""
        mlflow = self._mlflow()
        experiment_id = self._experiment_id()
        run_tags = {"family": family, **tags}
        with mlflow.start_run(experiment_id=experiment_id, run_name=family, tags=run_tags) as run:
            mlflow.log_params(params)
            mlflow.log_metrics({k: v for k, v in metrics.items() if v is not None})
            common = dict(name="model", registered_model_name=model_name,
                          pip_requirements=pip_requirements, await_registration_for=60)
            if flavor == "sklearn":
                import mlflow.sklearn

                info = mlflow.sklearn.log_model(
                    model, pyfunc_predict_fn="predict_proba",
                    skops_trusted_types=SKOPS_TRUSTED_TYPES, **common,
                )
            else:
                import mlflow.pyfunc

                info = mlflow.pyfunc.log_model(python_model=model, **common)
        version = str(info.registered_model_version)
        self.tag_version(model_name, version, run_tags)
        return RegisteredCandidate(
            family=family, model_name=model_name, version=version, run_id=run.info.run_id,
            model_uri=info.model_uri, tracking_uri=self.tracking_uri,
        )

    def load_scorer(self, model_name: str, version: str):
        """A function frame -> positive-class scores for a registered version."""
        import numpy as np

        mlflow = self._mlflow()
        model = mlflow.pyfunc.load_model(f"models:/{model_name}/{version}")

        def score(frame) -> np.ndarray:
            output = np.asarray(model.predict(frame), dtype=float)
            return output[:, 1] if output.ndim == 2 else output

        return score

    def alias_version(self, model_name: str, alias: str = CHAMPION_ALIAS) -> str | None:
        """The version an alias points at, or None when unset or the model is unknown.

        Any other registry error (unreachable server, broken store) is raised: "cannot tell"
        must never read as "no champion"."""
        from mlflow.exceptions import MlflowException

        try:
            return str(self.client().get_model_version_by_alias(model_name, alias).version)
        except MlflowException as error:
            if error.error_code in _NOT_FOUND:
                return None
            raise

    def set_alias(self, model_name: str, version: str, alias: str = CHAMPION_ALIAS) -> None:
        self.client().set_registered_model_alias(model_name, alias, version)

    def version_exists(self, model_name: str, version: str) -> bool:
        from mlflow.exceptions import MlflowException

        try:
            self.client().get_model_version(model_name, version)
            return True
        except MlflowException as error:
            if error.error_code in _NOT_FOUND:
                return False
            raise

    def model_tag(self, model_name: str, key: str) -> str | None:
        """A registered model's tag, or None when the tag or the model does not exist."""
        from mlflow.exceptions import MlflowException

        try:
            return self.client().get_registered_model(model_name).tags.get(key)
        except MlflowException as error:
            if error.error_code in _NOT_FOUND:
                return None
            raise

    def set_model_tag(self, model_name: str, key: str, value: str) -> None:
        self.client().set_registered_model_tag(model_name, key, value)

    def version_tags(self, model_name: str, version: str) -> dict[str, str]:
        return dict(self.client().get_model_version(model_name, version).tags)

    def training_batches(self, model_name: str, version: str) -> list[str]:
        """The batches a registered version was trained on (its `training_batches` tag, set
        when the candidate was registered)."""
        tagged = self.version_tags(model_name, version).get(TRAINING_BATCHES_TAG, "")
        return [batch for batch in tagged.split(",") if batch]

    def tag_version(self, model_name: str, version: str, tags: dict[str, str]) -> None:
        client = self.client()
        for key, value in tags.items():
            client.set_model_version_tag(model_name, version, key, value)
