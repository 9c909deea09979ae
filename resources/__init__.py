"""Outside systems behind one interface each: dataset landing zone, artifact store, MLflow."""

from resources.artifact_store import ArtifactStore
from resources.dataset import DatasetResource
from resources.mlflow_registry import MlflowRegistry, RegisteredCandidate
from resources.policy import PolicyResource

__all__ = [
    "ArtifactStore", "DatasetResource", "MlflowRegistry", "PolicyResource", "RegisteredCandidate",
]
