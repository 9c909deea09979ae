"""Candidate models as declarations; see `declaration.Candidate` and the README."""

from unified_assets.candidates.declaration import (
    Candidate,
    NoConfig,
    TrainedModel,
    TrainingContext,
)
from unified_assets.candidates.loading import (
    CandidateError,
    resolve_candidates,
)
from unified_assets.candidates.shipped import SHIPPED

__all__ = ["SHIPPED", "Candidate", "CandidateError",
           "NoConfig", "TrainedModel", "TrainingContext", "resolve_candidates"]
