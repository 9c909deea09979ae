"""Drift from per-batch profiles: each valid batch is profiled once at ingestion on one
dataset-wide layout; the champion's reference is the merge of its training batches'
profiles, so a drift decision reads a few KB of JSON, never raw rows."""

from __future__ import annotations

from typing import TYPE_CHECKING

from resources.artifact_store import ArtifactStore
from resources.mlflow_registry import MlflowRegistry
from unified_assets.ml.dataset_spec import DatasetSpec
from unified_assets.policy import DriftPolicy

if TYPE_CHECKING:
    import pandas as pd

LAYOUT_KEY = "profiles/layout.json"


def profile_key(batch: str) -> str:
    return f"profiles/{batch}.json"


def drift_key(batch: str) -> str:
    """Where `batch_drift` keeps its decision for a batch."""
    return f"drift/{batch}.json"


def ensure_layout(store: ArtifactStore, frame: pd.DataFrame, spec: DatasetSpec) -> dict:
    """The dataset's profile layout (bin edges, vocabularies), fixed by the first valid batch."""
    from unified_assets.ml.profiles import build_reference_profile

    if not store.exists(LAYOUT_KEY):
        # exact_rows=0: quantile edges even for a small first batch (~64 bins per column).
        store.write_json(LAYOUT_KEY, build_reference_profile(
            frame, spec.numeric_features, spec.categorical_features, exact_rows=0))
    return store.read_json(LAYOUT_KEY)  # the stored one wins if two batches raced


def store_batch_profile(store: ArtifactStore, frame: pd.DataFrame, spec: DatasetSpec,
                        batch: str) -> dict:
    from unified_assets.ml.profiles import profile_batch

    profile = profile_batch(frame, ensure_layout(store, frame, spec))
    store.write_json(profile_key(batch), profile)
    return profile


def champion_reference(store: ArtifactStore, registry: MlflowRegistry,
                       model_name: str) -> tuple[str, list[str], dict] | None:
    """(champion version, its training batches, their merged profile), or None."""
    from unified_assets.ml.profiles import merge_profiles

    version = registry.alias_version(model_name)
    if version is None:
        return None
    batches = registry.version_tags(model_name, version).get("training_batches", "").split(",")
    profiles = [store.read_json(profile_key(b)) for b in batches if b and store.exists(profile_key(b))]
    if not profiles:
        return None
    return version, batches, merge_profiles(profiles)


def batch_drift(store: ArtifactStore, reference: dict, batch: str, policy: DriftPolicy) -> dict:
    """Per-column drift of one batch's stored profile against `reference` (a dict)."""
    from unified_assets.ml.drift import compute_drift

    layout = store.read_json(LAYOUT_KEY)["layout"]
    result = compute_drift(reference, store.read_json(profile_key(batch)), layout=layout,
                           num_threshold=policy.num_threshold, cat_threshold=policy.cat_threshold,
                           drift_share=policy.drift_share)
    return result.to_dict() | {"markdown": result.to_markdown(),
                               "drifted_columns": result.drifted_columns}
