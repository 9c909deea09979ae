"""A plan as run tags (round trip, key validity, size), as a table and as metadata."""

from __future__ import annotations

import dataclasses
import json

import dagster as dg
import pytest
from dagster._utils.tags import is_valid_tag_key

from tests.unified_assets.placement.helpers import l4, local, pools
from unified_assets.compute import CPU_LIGHT, CPU_TRAINING, GPU_TRAINING
from unified_assets.placement import (
    DEFAULT_POLICY,
    PLACEMENT_TAG,
    Alternative,
    Decision,
    Plan,
    StepRequirement,
    decision_from_tags,
    decision_metadata,
    decisions_from_tags,
    plan,
    plan_to_tags,
    render_table,
)
from unified_assets.placement.serialize import (
    MAX_TAG_VALUE_CHARS,
    PLAN_REASON_CHARS,
    PLAN_TAG,
    decision_from_tag_value,
    decision_to_tag_value,
    tag_key,
)

STEPS = [
    StepRequirement("landed_batch", CPU_LIGHT),
    StepRequirement("model_sklearn", CPU_TRAINING, input_rows=24_000, asset_key="model_sklearn",
                    op_name="model_sklearn"),
    StepRequirement("model_torch", GPU_TRAINING, input_rows=24_000, asset_key="models/torch",
                    op_name="models__torch"),
    StepRequirement("tiny_torch", GPU_TRAINING, input_rows=300),
]
SNAPSHOTS = {
    "gpu-free": local(l4()),
    "gpu-busy": local(l4(), instance=pools(gpu_claimed=1)),
    "no-gpu": local(),
}


def _as_tagged(decision):
    """What the plan tag keeps: no alternatives, the reason cut to PLAN_REASON_CHARS."""
    reason = decision.reason
    if len(reason) > PLAN_REASON_CHARS:
        reason = reason[:PLAN_REASON_CHARS - 3] + "..."
    return dataclasses.replace(decision, alternatives=(), reason=reason)


@pytest.mark.parametrize("name", list(SNAPSHOTS))
def test_tags_round_trip(name):
    the_plan = plan(STEPS, SNAPSHOTS[name], DEFAULT_POLICY)
    tags = plan_to_tags(the_plan)
    # Alternatives and long reasons stay out of the run tags (the step records them at start).
    assert decisions_from_tags(tags) == {d.step_key: _as_tagged(d) for d in the_plan}
    assert decision_from_tags(tags, "model_torch") == _as_tagged(the_plan["model_torch"])
    assert decision_from_tags(tags, "not_a_step") is None


@pytest.mark.parametrize("name", list(SNAPSHOTS))
def test_two_tags_a_person_reads_and_a_compact_plan(name):
    """Found: 16 tags per training run, 9 of them `unified-ai/placement.<step>: {"s":...}`."""
    the_plan = plan(STEPS, SNAPSHOTS[name], DEFAULT_POLICY)
    tags = plan_to_tags(the_plan)
    assert set(tags) == {PLACEMENT_TAG, PLAN_TAG}
    for key in tags:
        assert is_valid_tag_key(key), key
    line = tags[PLACEMENT_TAG]
    assert "{" not in line and line.endswith(("fallbacks: none", "degrade_to_cpu"))
    assert dg.DagsterRun(job_name="j", tags=tags).tags == tags


def test_the_summary_line_names_gpu_steps_and_fallbacks():
    busy = plan(STEPS, SNAPSHOTS["gpu-busy"], DEFAULT_POLICY)
    assert plan_to_tags(busy)[PLACEMENT_TAG] == (
        "cpu: 4 steps · fallbacks: model_torch degrade_to_cpu")
    free = plan(STEPS, SNAPSHOTS["gpu-free"], DEFAULT_POLICY)
    assert plan_to_tags(free)[PLACEMENT_TAG] == (
        "gpu: model_torch · cpu: landed_batch, model_sklearn, tiny_torch · fallbacks: none")


def test_runs_launched_with_one_tag_per_step_are_still_read():
    the_plan = plan(STEPS, SNAPSHOTS["no-gpu"], DEFAULT_POLICY)
    legacy = {tag_key(d.step_key): decision_to_tag_value(d) for d in the_plan}
    assert decisions_from_tags(legacy) == {d.step_key: d for d in the_plan}


def test_keys_equal_to_the_step_key_are_not_repeated():
    decision = plan(STEPS, SNAPSHOTS["gpu-free"], DEFAULT_POLICY)["model_sklearn"]
    payload = json.loads(plan_to_tags(Plan((decision,)))[PLAN_TAG])["model_sklearn"]
    assert (payload["a"], payload["o"]) == ("=", "=")
    back = decision_from_tag_value(json.dumps({"s": "model_sklearn", **payload}))
    assert (back.requirement.asset_key, back.requirement.op_name) == ("model_sklearn", "model_sklearn")


def test_tag_value_shape():
    decision = plan(STEPS, SNAPSHOTS["no-gpu"], DEFAULT_POLICY)["model_torch"]
    payload = json.loads(decision_to_tag_value(decision))
    assert payload == {
        "s": "model_torch", "p": "gpu-training", "t": "cpu", "w": "cpu", "f": "degrade_to_cpu",
        "r": decision.reason, "n": 24000, "a": "models/torch", "o": "models__torch",
        "set": {"device": "cpu"},
        "alt": [["gpu", "absent: no CUDA device on host ws1 (torch 2.13.0+cpu has no CUDA build)"]],
    }
    in_plan = json.loads(plan_to_tags(Plan((decision,)))[PLAN_TAG])["model_torch"]
    assert "alt" not in in_plan and len(in_plan["r"]) <= PLAN_REASON_CHARS


@pytest.mark.parametrize(("step_key", "expected"), [
    ("model_torch", "unified-ai/placement.model_torch"),
    ("a" * 53, "unified-ai/placement." + "a" * 53),
    ("a" * 54, None),
    ("sweep[3]", None),  # dynamic mapping keys have brackets
])
def test_tag_keys(step_key, expected):
    key = tag_key(step_key)
    assert is_valid_tag_key(key)
    if expected:
        assert key == expected
    else:
        assert key.startswith("unified-ai/placement.h") and len(key) == len("unified-ai/placement.h") + 16


@pytest.mark.parametrize("limit", [MAX_TAG_VALUE_CHARS, 300, 200])
def test_oversized_decisions_are_cut_to_the_limit(limit):
    step = StepRequirement("sweep[17]", GPU_TRAINING, input_rows=10)
    long = Decision(step, "cpu", "cpu", "ü" * 2000 + ' "quoted" ' + "x" * 2000, "degrade_to_cpu",
                    {"device": "cpu"}, (Alternative("gpu", "y" * 3000),))
    value = decision_to_tag_value(long, limit)
    assert len(value) <= limit
    back = decision_from_tag_value(value)
    assert back.alternatives == ()  # dropped first
    assert back.reason.endswith("...") and long.reason.startswith(back.reason[:-3])
    assert (back.step_key, back.target, back.fallback, back.settings) == ("sweep[17]", "cpu",
                                                                          "degrade_to_cpu", {"device": "cpu"})


def test_value_that_cannot_fit_is_an_error():
    step = StepRequirement("s" * 300, GPU_TRAINING)
    with pytest.raises(ValueError, match="cannot fit 200 characters"):
        decision_to_tag_value(Decision(step, "gpu", "cuda:0", "ok"), 200)


def test_thousand_steps_fit_in_two_tags():
    steps = [StepRequirement(f"step_{i:04d}", GPU_TRAINING if i % 3 else CPU_LIGHT, input_rows=i * 50)
             for i in range(1000)]
    tags = plan_to_tags(plan(steps, SNAPSHOTS["gpu-busy"], DEFAULT_POLICY))
    assert len(tags) == 2 and len(tags[PLACEMENT_TAG]) < 200
    assert len(decisions_from_tags(tags)) == 1000


def test_table_lists_every_step():
    the_plan = plan(STEPS, SNAPSHOTS["gpu-busy"], DEFAULT_POLICY)
    lines = render_table(the_plan).splitlines()
    assert lines[0].split() == ["step", "profile", "target", "where", "fallback", "reason"]
    rows = {line.split()[0]: line.split()[1:5] for line in lines[2:2 + len(STEPS)]}
    assert rows == {
        "landed_batch": ["cpu-light", "cpu", "cpu", "none"],
        "model_sklearn": ["cpu-training", "cpu", "cpu", "none"],
        "model_torch": ["gpu-training", "cpu", "cpu", "degrade_to_cpu"],
        "tiny_torch": ["gpu-training", "cpu", "cpu", "none"],
    }
    assert "GPU busy (Dagster pool gpu-pool: 1/1 slots claimed" in lines[4]
    assert lines[-1].startswith("capacity: host ws1: 16 cpu")


def test_metadata_for_the_materialization():
    decision = plan(STEPS, SNAPSHOTS["gpu-free"], DEFAULT_POLICY)["model_torch"]
    meta = decision_metadata(decision)
    assert meta["placement_target"] == "gpu" and meta["placement_where"] == "cuda:0"
    assert meta["placement_fallback"] == "none" and meta["placement_stage"] == "plan"
    waited = dataclasses.replace(decision, fallback="wait")
    assert decision_metadata(waited)["placement_fallback"] == "waited for capacity, then ran"
    assert json.loads(meta["placement_settings"]) == {}
    assert all(isinstance(v, str) for v in meta.values())
