"""Outside systems behind one interface each: dataset landing zone, artifact store, MLflow.

Each is imported when first named (PEP 562), so a process that needs one module of this
package (the CLI's parser needs `incident_kinds`) does not import Dagster and every resource."""

from importlib import import_module

_WHERE = {
    "ArtifactStore": "resources.artifact_store",
    "DatasetResource": "resources.dataset",
    "MlflowRegistry": "resources.mlflow_registry",
    "RegisteredCandidate": "resources.mlflow_registry",
    "PolicyResource": "resources.policy",
}
__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module 'resources' has no attribute {name!r}")
    return getattr(import_module(_WHERE[name]), name)
