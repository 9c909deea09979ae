"""A plan as run tags, back from tags, as a table, and a decision as materialization metadata.

Two tags, so the run's tag list stays readable: `unified-ai/placement` is one line a person
reads ("gpu: model_torch · cpu: 8 steps · fallbacks: none"), and `unified-ai/plan` holds the
per-step decisions as one compact JSON object (step key -> decision) for the steps to read
at start. Each decision is kept under `MAX_TAG_VALUE_CHARS` (alternatives dropped, then the
reason cut): the step re-validates its placement when it starts and records the full reason
in its metadata. Runs launched with the older one-tag-per-step layout
(`unified-ai/placement.<step>`) are still read."""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Mapping
from typing import Any

from unified_assets.compute import PROFILES, ComputeProfile
from unified_assets.placement.decision import Alternative, Decision, Plan, StepRequirement

PLACEMENT_TAG = "unified-ai/placement"
PLAN_TAG = "unified-ai/plan"
MAX_TAG_VALUE_CHARS = 1024
PLAN_REASON_CHARS = 160  # per step inside the plan tag; the full reason goes to metadata
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


def summary_line(plan: Plan) -> str:
    """One line for the run's tag list: where the non-CPU work goes, how many steps run on
    CPU, and any fallback applied."""
    by_target: dict[str, list[str]] = {}
    for decision in plan:
        by_target.setdefault(decision.target, []).append(decision.step_key)
    parts = []
    for target, steps in sorted(by_target.items(), key=lambda kv: kv[0] != "gpu"):
        named = ", ".join(steps) if len(steps) <= 3 else f"{len(steps)} steps"
        parts.append(f"{target}: {named}")
    fell_back = [d for d in plan if d.fallback != "none"]
    if len(fell_back) <= 3:
        fallbacks = [f"{d.step_key} {d.fallback}" for d in fell_back]
    else:
        kinds: dict[str, int] = {}
        for decision in fell_back:
            kinds[decision.fallback] = kinds.get(decision.fallback, 0) + 1
        fallbacks = [f"{n} steps {kind}" for kind, n in sorted(kinds.items())]
    parts.append("fallbacks: " + (", ".join(fallbacks) if fallbacks else "none"))
    return " · ".join(parts)


def plan_to_tags(plan: Plan, limit: int = PLAN_REASON_CHARS + 350) -> dict[str, str]:
    """Run tags for a plan: the summary line and the compact per-step plan."""
    steps = {}
    for decision in plan:
        payload = json.loads(decision_to_tag_value(decision, limit))
        payload.pop("alt", None)
        if len(payload["r"]) > PLAN_REASON_CHARS:
            payload["r"] = payload["r"][:PLAN_REASON_CHARS - len(_ELLIPSIS)] + _ELLIPSIS
        steps[payload.pop("s")] = payload
    return {PLACEMENT_TAG: summary_line(plan), PLAN_TAG: _dumps(steps)}


def decisions_from_tags(tags: Mapping[str, str],
                        profiles: Mapping[str, ComputeProfile] = PROFILES) -> dict[str, Decision]:
    """Decisions found in run tags, by step key."""
    prefix = PLACEMENT_TAG + "."  # the older layout: one tag per step
    found = {d.step_key: d for d in (decision_from_tag_value(v, profiles)
                                     for k, v in tags.items() if k.startswith(prefix))}
    if tags.get(PLAN_TAG):
        for step_key, payload in json.loads(tags[PLAN_TAG]).items():
            found[step_key] = decision_from_tag_value(_dumps({"s": step_key, **payload}),
                                                      profiles)
    return found


def decision_from_tags(tags: Mapping[str, str], step_key: str,
                       profiles: Mapping[str, ComputeProfile] = PROFILES) -> Decision | None:
    return decisions_from_tags(tags, profiles).get(step_key)


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


FALLBACK_WORDS = {  # what happened, as read on a step that ran
    "none": "none",
    "wait": "waited for capacity, then ran",
    "degrade_to_cpu": "degraded to CPU",
}


def process_evidence(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """Which process ran a local step: one forked from the warm server (scripts/dev.sh,
    unified_assets/local_warm.py: the libraries were imported before the run), or one Python
    started for the run."""
    from unified_assets.placement.ray_warm import SERVER_ENV

    server = (os.environ if environ is None else environ).get(SERVER_ENV)
    return {"placement_process": f"forked from warm server {server} (libraries preloaded)"
            if server else "started for this run (no warm server)"}


def decision_metadata(decision: Decision) -> dict[str, str]:
    """Materialization metadata (plain strings: Dagster shows them as text). Recorded by a
    step that ran, so a `wait` fallback reads as waited, not as still waiting. A step that ran
    as a Ray job adds where Ray ran it (`ray_*`: node, pool, GPU ids, request); a local one,
    which process ran it (`placement_process`)."""
    from unified_assets.placement.ray_step import ray_evidence

    return {**(ray_evidence() or process_evidence()), **{
        "placement_target": decision.target,
        "placement_where": decision.where,
        "placement_fallback": FALLBACK_WORDS.get(decision.fallback, decision.fallback),
        "placement_reason": decision.reason,
        "placement_stage": decision.stage,
        "placement_settings": _dumps(dict(decision.settings)),
    }}
