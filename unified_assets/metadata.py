"""Helpers that turn results into metadata a person wants to read in the Dagster UI."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import dagster as dg

OWNERS = ["team:ml-platform"]
SIGNIFICANT_DIGITS = 4  # enough to tell two models apart, short enough to read (0.7811)


def rounded(value: float, digits: int = SIGNIFICANT_DIGITS) -> float:
    """`value` to `digits` significant digits, never rounding away whole units (12346, not
    12350): 0.78114253001766 -> 0.7811, 0.0123456 -> 0.01235. NaN and infinity stay."""
    if not math.isfinite(value) or value == 0:
        return value
    decimals = max(0, digits - 1 - math.floor(math.log10(abs(value))))
    return round(value, decimals)


def fmt(value: float) -> str:
    """A float as text the way `rounded` keeps it: 0.7811, 12346, 0.3."""
    value = rounded(value)
    return str(int(value)) if math.isfinite(value) and value.is_integer() else str(value)


def listed(items: Sequence[str], limit: int = 10) -> str:
    """All of `items`, or the first `limit` and how many more: a list cut silently reads as
    complete ("a, b, c" when seven drifted)."""
    if not items:
        return "none"
    shown = ", ".join(str(i) for i in items[:limit])
    return shown if len(items) <= limit else f"{shown} and {len(items) - limit} more"


def _cell(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return fmt(value)
    return str(value).replace("|", "\\|")


def markdown_table(rows: Iterable[Mapping[str, Any]], columns: list[str]) -> dg.MarkdownMetadataValue:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_cell(row.get(c)) for c in columns) + " |" for row in rows]
    return dg.MetadataValue.md("\n".join(lines))


def numbers(values: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Numeric metadata entries, floats `rounded`; None stays visible as text instead of a
    fake zero."""
    out: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, bool):
            out[prefix + key] = value
        elif isinstance(value, int):
            out[prefix + key] = dg.MetadataValue.int(value)
        elif isinstance(value, float):
            out[prefix + key] = dg.MetadataValue.float(rounded(value))
        elif value is None:
            out[prefix + key] = dg.MetadataValue.text("undefined")
    return out


def placement_metadata(context, profile, placement_policy=None) -> dict[str, str]:
    """Where this step runs and why (`placement_*`), as the model steps record it: the plan
    in the run tags re-validated on this host, or a decision made now. Every step records
    it, so the UI answers "where did this run" for any asset. A CPU profile probes no GPU."""
    from unified_assets.placement import (
        DEFAULT_POLICY,
        StepRequirement,
        decide_at_start,
        decision_metadata,
    )

    requirement = StepRequirement(str(context.op_handle), profile,
                                  asset_key=context.asset_key.to_user_string())
    decision = decide_at_start(context.run.tags, requirement,
                               policy=placement_policy or DEFAULT_POLICY)
    return decision_metadata(decision)
