"""Helpers that turn results into metadata a person wants to read in the Dagster UI."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import dagster as dg

OWNERS = ["team:ml-platform"]


def _cell(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value).replace("|", "\\|")


def markdown_table(rows: Iterable[Mapping[str, Any]], columns: list[str]) -> dg.MarkdownMetadataValue:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_cell(row.get(c)) for c in columns) + " |" for row in rows]
    return dg.MetadataValue.md("\n".join(lines))


def numbers(values: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Numeric metadata entries; None stays visible as text instead of a fake zero."""
    out: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, bool):
            out[prefix + key] = value
        elif isinstance(value, int):
            out[prefix + key] = dg.MetadataValue.int(value)
        elif isinstance(value, float):
            out[prefix + key] = dg.MetadataValue.float(value)
        elif value is None:
            out[prefix + key] = dg.MetadataValue.text("undefined")
    return out
