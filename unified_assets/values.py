"""Typed values that evaluation, selection, approval and promotion hand each other.

A candidate's evaluation report and the challenger choice used to be dicts whose keys every
reader had to know (and one private key slipped in and popped later); these dataclasses are
the contract, and `as_json()` is the one place that turns them into the stored/logged JSON.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

Metrics = dict[str, float | None]


@dataclass(frozen=True)
class ChampionNumbers:
    """The current champion scored on the candidate's holdout rows."""

    version: str
    overall: Metrics
    segments: list[dict[str, Any]]


@dataclass(frozen=True)
class GateOutcome:
    passed: bool
    message: str


@dataclass(frozen=True)
class ReportLinks:
    """Where a person opens the reports over HTTP (the MLflow UI); None when not logged."""

    mlflow_run: str | None = None
    report: str | None = None
    report_file: str | None = None


@dataclass
class EvaluationReport:
    """One candidate on the holdout, beside the champion, judged by the policy's gates.

    `error` set means the candidate could not be trained or evaluated: it fails every gate
    and the other candidates are still compared."""

    family: str
    model_name: str
    version: str | None
    overall: Metrics = field(default_factory=dict)
    segments: list[dict[str, Any]] = field(default_factory=list)
    champion: ChampionNumbers | None = None
    training_batches: list[str] | None = None
    threshold: float | None = None
    holdout_rows: int = 0
    feature_auc: dict[str, float] = field(default_factory=dict)
    error: str | None = None
    gates: dict[str, GateOutcome] = field(default_factory=dict)
    passed_gates: bool = False
    blocking_gates: tuple[str, ...] = ()
    report_uri: str | None = None  # runs:/... in MLflow (approvals and rollbacks cite it)
    mlflow_error: str | None = None
    links: ReportLinks = field(default_factory=ReportLinks)

    @property
    def who(self) -> str:
        return f"{self.family} v{self.version}"

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class CandidateOutcome:
    """How one candidate fared in selection."""

    version: str | None
    passed: bool
    failures: list[str]
    error: str | None = None


@dataclass(frozen=True)
class ChallengerChoice:
    """The challenger: the chosen candidate's report, why, and every candidate's outcome."""

    model_name: str
    reason: str
    chosen: EvaluationReport
    candidates: dict[str, CandidateOutcome]

    @property
    def family(self) -> str:
        return self.chosen.family

    @property
    def version(self) -> str:
        return str(self.chosen.version)

    @property
    def report_uri(self) -> str | None:
        return self.chosen.report_uri

    @property
    def training_batches(self) -> list[str] | None:
        return self.chosen.training_batches


@dataclass(frozen=True)
class ApprovalRecord:
    """Where the challenger stands after the policy (and any person) had its say."""

    challenger: ChallengerChoice
    approval_state: str  # approved, requested, rejected, expired, unverified, none
    approval: str  # the state described for people
    approved_by: str | None = None

    @property
    def model_name(self) -> str:
        return self.challenger.model_name

    @property
    def version(self) -> str:
        return self.challenger.version

    @property
    def approved(self) -> bool:
        return self.approval_state == "approved"
