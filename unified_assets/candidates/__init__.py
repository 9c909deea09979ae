"""Candidate models as declarations; see `declaration.Candidate` and the README."""

from unified_assets.candidates.declaration import (
    CANDIDATE_TAG,
    Candidate,
    NoConfig,
    TrainedModel,
    TrainingContext,
    candidate_names,
)
from unified_assets.candidates.loading import (
    CandidateError,
    resolve_candidates,
)
from unified_assets.candidates.shipped import SHIPPED

__all__ = ["CANDIDATE_TAG", "SHIPPED", "candidate_names", "Candidate", "CandidateError",
           "NoConfig", "TrainedModel", "TrainingContext", "resolve_candidates"]
