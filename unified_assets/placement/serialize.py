"""A plan as run tags (one compact JSON value per step), back from tags, as a table, and a
decision as materialization metadata.

Tag keys are `unified-ai/placement.<step key>` (a hash replaces step keys that are not valid
tag-key characters or too long); the summary tag `unified-ai/placement` counts the targets.
Dagster OSS stores run tag values as TEXT, but run tags are for filtering and the UI, so each
value is kept under `MAX_TAG_VALUE_CHARS`: alternatives are dropped, then the reason cut."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from typing import Any

from unified_assets.compute import PROFILES, ComputeProfile
from unified_assets.placement.decision import Alternative, Decision, Plan, StepRequirement

PLACEMENT_TAG = "unified-ai/placement"
MAX_TAG_VALUE_CHARS = 1024
_KEY_SAFE = re.compile(r"^[A-Za-z0-9_.-]{1,53}$")  # "placement." + 53 = Dagster's 63 per segment
_ELLIPSIS = "..."
SAME_AS_STEP = "="  # asset key / op name equal to the step key (never a valid key itself)


def tag_key(step_key: str) -> str:
    if _KEY_SAFE.match(step_key):
        return f"{PLACEMENT_TAG}.{step_key}"
    return f"{PLACEMENT_TAG}.h{hashlib.sha1(step_key.encode()).hexdigest()[:16]}"


def _dumps(payload: Mapping[str, Any]) -> str:
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False)


def _same(value: str | None, step_key: str) -> str | None:
    return SAME_AS_STEP if value == step_key else value


def _unsame(value: str | None, step_key: str) -> str | None:
    return step_key if value == SAME_AS_STEP else value


def decision_to_tag_value(decision: Decision, limit: int = MAX_TAG_VALUE_CHARS) -> str:
    step = decision.requirement
    payload: dict[str, Any] = {"s": step.step_key, "p": step.profile.name, "t": decision.target,
                               "w": decision.where, "f": decision.fallback, "r": decision.reason}
    optional = {"n": step.input_rows, "a": _same(step.asset_key, step.step_key),
                "o": _same(step.op_name, step.step_key),
                "set": dict(decision.settings) or None,
                "st": decision.stage if decision.stage != "plan" else None,
                "alt": [[a.target, a.rejected] for a in decision.alternatives] or None}
    payload.update({k: v for k, v in optional.items() if v is not None})
    text = _dumps(payload)
    if len(text) > limit:
        payload.pop("alt", None)
        text = _dumps(payload)
    reason = decision.reason
    keep = len(reason) - (len(text) - limit) - len(_ELLIPSIS)
    while len(text) > limit:  # cut the reason; loop because JSON escaping can lengthen it
        if keep < 0:
            raise ValueError(f"placement of step {step.step_key!r} cannot fit {limit} characters")
        payload["r"] = reason[:keep] + _ELLIPSIS
        text = _dumps(payload)
        keep -= 1
    return text


def decision_from_tag_value(value: str,
                            profiles: Mapping[str, ComputeProfile] = PROFILES) -> Decision:
    data = json.loads(value)
    key = data["s"]
    step = StepRequirement(key, profiles[data["p"]], data.get("n"),
                           _unsame(data.get("a"), key), _unsame(data.get("o"), key))
    return Decision(step, data["t"], data["w"], data["r"], data["f"], data.get("set", {}),
                    tuple(Alternative(t, why) for t, why in data.get("alt", [])),
                    data.get("st", "plan"))


def plan_to_tags(plan: Plan, limit: int = MAX_TAG_VALUE_CHARS) -> dict[str, str]:
    """Run tags for a plan: one per step plus the summary tag."""
    tags = {tag_key(d.step_key): decision_to_tag_value(d, limit) for d in plan}
    tags[PLACEMENT_TAG] = " ".join(f"{k}={v}" for k, v in plan.counts().items())
    return tags


def decisions_from_tags(tags: Mapping[str, str],
                        profiles: Mapping[str, ComputeProfile] = PROFILES) -> dict[str, Decision]:
    """Decisions found in run tags, by step key."""
    prefix = PLACEMENT_TAG + "."
    found = (decision_from_tag_value(v, profiles) for k, v in tags.items() if k.startswith(prefix))
    return {d.step_key: d for d in found}


def decision_from_tags(tags: Mapping[str, str], step_key: str,
                       profiles: Mapping[str, ComputeProfile] = PROFILES) -> Decision | None:
    value = tags.get(tag_key(step_key))
    return decision_from_tag_value(value, profiles) if value is not None else None


def render_table(plan: Plan) -> str:
    """A fixed-width table: step, profile, target, where, fallback, reason."""
    header = ("step", "profile", "target", "where", "fallback", "reason")
    rows = [header] + [(d.step_key, d.profile.name, d.target, d.where, d.fallback, d.reason)
                       for d in plan]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header) - 1)]

    def line(row: tuple[str, ...]) -> str:
        return "  ".join([*(cell.ljust(w) for cell, w in zip(row, widths, strict=False)), row[-1]])

    out = [line(header), "  ".join("-" * w for w in widths) + "  ------", *map(line, rows[1:])]
    if plan.snapshot_summary:
        out.append(f"capacity: {plan.snapshot_summary}")
    return "\n".join(out)


def decision_metadata(decision: Decision) -> dict[str, str]:
    """Materialization metadata (plain strings: Dagster shows them as text)."""
    return {
        "placement_target": decision.target,
        "placement_where": decision.where,
        "placement_fallback": decision.fallback,
        "placement_reason": decision.reason,
        "placement_stage": decision.stage,
        "placement_settings": _dumps(dict(decision.settings)),
    }
