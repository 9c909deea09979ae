"""A champion that cannot be scored blocks the comparison clearly, never reads as "no
champion" (which would wave any candidate through the improvement gate)."""

import dagster as dg
import pandas as pd
import pytest

from resources.decision_store import DecisionStore
from resources.mlflow_registry import MlflowRegistry
from unified_assets.assets.evaluation import score_champion


@pytest.fixture
def registry(settings):
    registry = MlflowRegistry(tracking_uri=settings.mlflow_tracking_uri)
    client = registry.client()
    client.create_registered_model("m")
    missing = settings.home / "mlartifacts" / "deleted-run" / "model"  # artifacts gone
    client.create_model_version("m", source=missing.as_uri())
    client.create_model_version("m", source=missing.as_uri())
    client.delete_model_version("m", "2")
    return registry


@pytest.mark.parametrize(("version", "what"), [
    ("1", "cannot be scored: its model files at file://"),
    ("2", "cannot be scored: the model version is no longer in the registry."),
])
def test_an_unusable_champion_fails_the_evaluation_with_an_incident(registry, settings, version, what):
    """Found: deleted champion artifacts gave `No such artifact: ''` and no incident."""
    decisions = DecisionStore(url=settings.decisions_url)
    frame = pd.DataFrame({"x": [0.0, 1.0]})
    with pytest.raises(dg.Failure) as failure:
        score_champion(registry, decisions, "m", version, frame)
    message = failure.value.description
    assert f"champion v{version} of m (models:/m/{version}) {what}" in message
    assert "roll back to an earlier champion" in message
    (incident,) = decisions.incidents("champion_unusable")
    assert incident["details"]["version"] == version and incident["reason"] == message
