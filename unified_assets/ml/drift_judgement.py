"""Drift from per-batch profiles: each valid batch is profiled once at ingestion on one
dataset-wide layout (bin edges, vocabularies) fixed by the first valid batch; the champion's
reference is the merge of its training batches' profiles, so a drift decision reads a few KB
of profile, never raw rows. Plain code: the assets hand it the profiles."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pandas as pd

    from unified_assets.ml.dataset_spec import DatasetSpec
    from unified_assets.policy import DriftPolicy


def batch_profile(frame: pd.DataFrame, spec: DatasetSpec, layout_source: dict | None) -> dict:
    """`frame`'s profile, carrying the layout it was binned on (so any one profile is enough
    to profile the next batch alike). `layout_source` is an earlier batch's profile; None
    means this batch is the first valid one and fixes the layout."""
    from unified_assets.ml.profiles import build_reference_profile, layout_of, profile_batch

    if layout_source is None:
        # exact_rows=0: quantile edges even for a small first batch (~64 bins per column).
        layout_source = build_reference_profile(
            frame, spec.numeric_features, spec.categorical_features, exact_rows=0)
    return profile_batch(frame, layout_source) | {"layout": layout_of(layout_source)}


def on_one_layout(profiles: dict[str, dict], rows: Callable[[str], pd.DataFrame],
                  ) -> tuple[dict[str, dict], list[str]]:
    """The profiles (batch -> profile, oldest first) on one layout: the first batch's. A batch
    profiled on another layout is profiled again from its stored rows (`rows(batch)`).

    Why it happens: "the first valid batch fixes the layout" is read from earlier
    materializations, so first ingestions that run at the same time (batches retried one per
    run after an outage, say) each fix their own. Returns the profiles and the batches
    profiled again."""
    from unified_assets.ml.profiles import layout_of, profile_batch

    source = next(iter(profiles.values()))
    layout = layout_of(source)
    out: dict[str, dict] = {}
    redone: list[str] = []
    for batch, profile in profiles.items():
        if profile["layout_id"] == source["layout_id"]:
            out[batch] = profile
        else:
            out[batch] = profile_batch(rows(batch), source) | {"layout": layout}
            redone.append(batch)
    return out, redone


def judge_drift(reference_profiles: list[dict], profile: dict, policy: DriftPolicy) -> dict:
    """Per-column drift of one batch's profile against the merge of `reference_profiles`."""
    from unified_assets.ml.drift import compute_drift
    from unified_assets.ml.profiles import layout_of, merge_profiles

    if not reference_profiles:
        raise ValueError("no reference profile to judge drift against")
    result = compute_drift(merge_profiles(reference_profiles), profile, layout=layout_of(profile),
                           num_threshold=policy.num_threshold, cat_threshold=policy.cat_threshold,
                           drift_share=policy.drift_share)
    return result.to_dict() | {"markdown": result.to_markdown(),
                               "drifted_columns": result.drifted_columns}
