"""Dataset spec: what a user's data looks like, validated at load with errors naming the field.

The default spec describes the bundled payments-risk domain; a user brings their own
data with a YAML file of the same shape (see README, "Bring your own data").
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    ValidationError,
    field_validator,
    model_validator,
)

DEFAULT_MAX_NULL_FRACTION = 0.1
LabelValue = StrictBool | StrictInt | StrictFloat | StrictStr


class DatasetSpecError(ValueError):
    """A dataset spec that cannot be used; the message names the file and the field."""


class SourceSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    path: str = Field(description="Folder holding one file per batch (relative to the spec file).")
    format: Literal["parquet", "csv"] = "parquet"
    pattern: str | None = Field(default=None, description="Glob for batch files; default *.<format>.")
    labels_path: str | None = Field(
        default=None, description="Folder of late label files, one per batch, named like the batch "
        "file (relative to the spec file); default: <path>/labels.")

    @field_validator("pattern")
    @classmethod
    def _pattern_names_files_in_the_folder(cls, pattern: str | None) -> str | None:
        """A pattern matches file names in `path` only: a separator or `..` would let a spec
        read files anywhere on the machine."""
        if pattern is None:
            return None
        if not pattern.strip() or "/" in pattern or "\\" in pattern or pattern in (".", "..") \
                or "**" in pattern:
            raise ValueError(f"{pattern!r} must match file names inside the source folder "
                             "(no '/', '\\', '..' or '**')")
        return pattern

    @property
    def glob(self) -> str:
        return self.pattern or f"*.{self.format}"

    @property
    def extension(self) -> str:
        """The literal suffix batch files end with (`.csv` for `b-*.csv`), used to name
        partitions; `.<format>` when the pattern ends in a wildcard."""
        suffix = "." + self.glob.rsplit(".", 1)[-1] if "." in self.glob else ""
        return suffix if suffix and not any(c in suffix for c in "*?[]") else f".{self.format}"

    @property
    def labels_folder(self) -> str:
        return self.labels_path or f"{self.path.rstrip('/')}/labels"


class DatasetSpec(BaseModel):
    """Columns and roles of a binary-classification dataset delivered in batches."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$", description="Also the MLflow model name.")
    source: SourceSpec
    target: str
    positive_label: LabelValue | None = Field(
        default=None, description="The target value of the positive class (any type: 1, true, "
        "'Yes'); needed unless the labels are 0/1 or booleans.")
    labels: Literal["inline", "late", "either"] = Field(
        default="inline", description="inline: every batch carries the target column (a batch "
        "without it is an error naming the column); late: batches land without it and label "
        "files follow; either: both happen.")
    id_column: str | None = None
    time_column: str | None = None
    segment_columns: list[str] = Field(default_factory=list)
    numeric_features: list[str] = Field(default_factory=list)
    categorical_features: list[str] = Field(default_factory=list)
    ranges: dict[str, tuple[float | None, float | None]] = Field(default_factory=dict)
    max_null_fraction: float = Field(
        default=DEFAULT_MAX_NULL_FRACTION, ge=0.0, le=1.0,
        description="Share of null cells allowed in any feature or segment column.")
    null_limits: dict[str, float] = Field(
        default_factory=dict, description="Per-column share of nulls allowed, overriding "
        "max_null_fraction for that column.")
    policy: str | None = Field(
        default=None, description="Policy file for this dataset, relative to the spec's folder "
        "(used when UNIFIED_AI_POLICY is unset).")

    @model_validator(mode="after")
    def _columns_are_coherent(self) -> DatasetSpec:
        features = self.numeric_features + self.categorical_features
        if not features:
            raise ValueError("numeric_features/categorical_features: at least one feature is needed")
        duplicated = sorted({c for c in features if features.count(c) > 1})
        if duplicated:
            raise ValueError(f"numeric_features/categorical_features: listed twice: {duplicated}")
        if self.target in features:
            raise ValueError(f"target: {self.target!r} is also listed as a feature")
        for role in ("id_column", "time_column"):
            column = getattr(self, role)
            if column is not None and (column in features or column == self.target):
                raise ValueError(f"{role}: {column!r} is also a feature or the target")
        if self.target in self.segment_columns:
            raise ValueError(f"segment_columns: the target {self.target!r} cannot be a segment")
        for column, limit in self.null_limits.items():
            if column not in features and column not in self.segment_columns:
                raise ValueError(f"null_limits.{column}: not a feature or segment column")
            if not 0.0 <= limit <= 1.0:
                raise ValueError(f"null_limits.{column}: {limit} is not a share between 0 and 1")
        for column, (low, high) in self.ranges.items():
            if column not in self.numeric_features:
                raise ValueError(f"ranges.{column}: not a numeric feature")
            if low is not None and high is not None and low > high:
                raise ValueError(f"ranges.{column}: lower bound {low} exceeds upper bound {high}")
        return self

    @property
    def feature_columns(self) -> list[str]:
        return self.numeric_features + self.categorical_features

    def null_limit(self, column: str) -> tuple[float, str]:
        """The share of nulls allowed in `column` and the spec field that sets it."""
        if column in self.null_limits:
            return self.null_limits[column], f"null_limits.{column}"
        return self.max_null_fraction, "max_null_fraction"

    @property
    def named_columns(self) -> dict[str, str]:
        """Every column the spec names, with the first spec field naming it."""
        named: dict[str, str] = {self.target: "target"}
        for role in ("id_column", "time_column"):
            if getattr(self, role):
                named.setdefault(getattr(self, role), role)
        for role in ("segment_columns", "numeric_features", "categorical_features"):
            for column in getattr(self, role):
                named.setdefault(column, role)
        for role in ("ranges", "null_limits"):
            for column in getattr(self, role):
                named.setdefault(column, f"{role}.{column}")
        return named

    @property
    def required_columns(self) -> list[str]:
        """Columns every batch must carry (id/time are optional conveniences)."""
        extra = [c for c in self.segment_columns if c not in self.feature_columns]
        return self.feature_columns + extra + [self.target]

    def with_source_path(self, path: Path) -> DatasetSpec:
        return self.model_copy(update={"source": self.source.model_copy(update={"path": str(path)})})


def describe_validation_error(error: ValidationError) -> str:
    """One line per problem, each starting with the dotted path of the offending key."""
    parts = []
    for item in error.errors():
        key = ".".join(str(p) for p in item["loc"]) or "(top level)"
        parts.append(f"{key}: {item['msg'].removeprefix('Value error, ')}")
    return "; ".join(parts)


def parse_spec(data: object, origin: str = "<dataset spec>") -> DatasetSpec:
    """Validate a mapping as a dataset spec; errors name `origin` and the field."""
    if not isinstance(data, dict):
        raise DatasetSpecError(f"{origin}: expected a mapping of fields, got {type(data).__name__}")
    try:
        return DatasetSpec.model_validate(data)
    except ValidationError as error:
        raise DatasetSpecError(f"{origin}: {describe_validation_error(error)}") from None


def load_spec(path: str | Path, landing_dir: str | Path | None = None) -> DatasetSpec:
    """Load a YAML dataset spec; a relative source path is resolved against the spec's folder.

    Source and labels folders must stay inside the spec's folder or the landing zone
    (`landing_dir`): a spec is configuration, not a way to read any file on the machine."""
    path = Path(path)
    if not path.is_file():
        raise DatasetSpecError(f"{path}: dataset spec file not found")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise DatasetSpecError(f"{path}: not valid YAML: {error}") from None
    spec = parse_spec(data, origin=str(path))
    roots = [path.parent.resolve()] + ([Path(landing_dir).resolve()] if landing_dir else [])
    source = _contained(path, "source.path", spec.source.path, roots)
    spec = spec.with_source_path(source)
    if spec.policy:
        policy = _contained(path, "policy", spec.policy, [path.parent.resolve()])
        spec = spec.model_copy(update={"policy": str(policy)})
    if spec.source.labels_path:
        labels = _contained(path, "source.labels_path", spec.source.labels_path, roots)
        spec = spec.model_copy(update={"source": spec.source.model_copy(
            update={"labels_path": str(labels)})})
    return spec


def _contained(spec_file: Path, field: str, value: str, roots: list[Path]) -> Path:
    """`value` resolved against the spec's folder (symlinks followed); refused unless it lies
    inside one of `roots`."""
    resolved = (spec_file.parent / value).resolve()
    if not any(resolved.is_relative_to(root) for root in roots):
        raise DatasetSpecError(
            f"{spec_file}: {field}: {value!r} resolves to {resolved}, outside the spec's folder "
            f"and the landing zone ({', '.join(str(r) for r in roots)})")
    return resolved


PAYMENTS_SPEC_DATA: dict = {
    "name": "payments-risk",
    "source": {"path": "landing", "format": "parquet"},
    "target": "is_fraud",
    "labels": "either",  # the generator's `--labels late` batches land without is_fraud
    "max_null_fraction": 0.0,
    "id_column": "transaction_id",
    "time_column": "event_time",
    "segment_columns": ["region", "customer_tier"],
    "numeric_features": [
        "amount", "avg_amount_30d", "account_age_days", "txn_count_24h",
        "distance_from_home_km", "hour_of_day", "is_international", "card_present",
        "device_trust_score",
    ],
    "categorical_features": ["merchant_category", "channel", "region", "customer_tier"],
    "ranges": {
        "amount": (0, None), "avg_amount_30d": (0, None), "account_age_days": (0, None),
        "txn_count_24h": (0, None), "distance_from_home_km": (0, None), "hour_of_day": (0, 23),
        "is_international": (0, 1), "card_present": (0, 1), "device_trust_score": (0, 1),
    },
}


def payments_spec(landing_dir: Path) -> DatasetSpec:
    """The built-in payments-risk spec reading batches from `landing_dir`."""
    return parse_spec(PAYMENTS_SPEC_DATA, origin="built-in payments spec").with_source_path(
        landing_dir
    )
