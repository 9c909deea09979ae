"""Bring your own messy table, end to end on the shipped policy: `spec infer` drafts the spec,
the draft is used as written, and the lifecycle gives a champion or a hold with its reason.

The table has what real churn/credit tables have: string labels, nulls at different rates in
several columns, an integer-coded 0/1 column, a boolean, a 300-level categorical and an id.
"""

import numpy as np
import pandas as pd
import pytest

from resources.mlflow_registry import MlflowRegistry
from unified_assets.lifecycle import run_lifecycle
from unified_assets.ml.spec_infer import infer_spec
from unified_assets.settings import Settings

ROWS = 1500
pytestmark = pytest.mark.slow  # full lifecycles


def _churn(seed: int, leak: bool = False) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    tenure = rng.integers(0, 72, ROWS)
    contract = rng.choice(["month", "year", "two-year"], ROWS, p=[0.5, 0.3, 0.2])
    monthly = rng.normal(70, 20, ROWS)
    senior = rng.integers(0, 2, ROWS)
    logit = (-0.04 * tenure + np.where(contract == "month", 1.2, -0.8) + 0.02 * (monthly - 70)
             + 0.4 * senior + rng.normal(0, 0.5, ROWS))
    churned = np.where(rng.random(ROWS) < 1 / (1 + np.exp(-logit)), "Yes", "No")
    frame = pd.DataFrame({
        "customer_id": [f"c{seed}-{i}" for i in range(ROWS)],
        "tenure": tenure,
        "monthly": np.where(rng.random(ROWS) < 0.15, np.nan, monthly),
        "senior": senior,
        "paperless": rng.random(ROWS) < 0.6,
        "contract": np.where(rng.random(ROWS) < 0.05, None, contract),
        "zip": rng.choice([f"z{i:03d}" for i in range(300)], ROWS),
        "Churn": churned,
    })
    if leak:  # recorded after the fact: only churned customers have a reason
        frame["cancel_reason"] = np.where(churned == "Yes",
                                          rng.choice(["price", "service", "moved"], ROWS), "none")
    return frame


def _byo(tmp_path, settings, leak: bool = False) -> tuple[Settings, dict]:
    folder = tmp_path / "churn" / "batches"
    folder.mkdir(parents=True)
    for i in range(3):
        _churn(i, leak).to_csv(folder / f"export-{i}.csv", index=False)
    out = tmp_path / "churn" / "spec.yaml"
    draft = infer_spec([folder], out)
    out.write_text(draft.text)  # used as drafted: no edited line
    return Settings("local", settings.home, dataset_spec=str(out)), draft.spec


def test_a_messy_churn_table_goes_from_spec_infer_to_a_champion(settings, instance, tmp_path):
    byo, spec = _byo(tmp_path, settings)
    assert spec["target"] == "Churn" and spec["positive_label"] == "Yes"
    assert spec["id_column"] == "customer_id" and "zip" in spec["categorical_features"]
    summary = run_lifecycle(byo, instance)
    assert len(summary.batches_ingested) == 3, summary.lines()
    for family in ("sklearn", "torch"):
        report = summary.candidates[family]
        assert not report.error, report.error
        assert report.overall["roc_auc"] > 0.75, (family, report.overall)
    assert summary.production.get("champion"), "\n".join(summary.lines())
    client = MlflowRegistry(tracking_uri=byo.mlflow_tracking_uri).client()
    alias = client.get_model_version_by_alias(spec["name"], "champion")
    assert str(alias.version) == summary.production["champion"]


def test_a_leaking_column_is_named_by_the_leakage_check(settings, instance, tmp_path):
    byo, spec = _byo(tmp_path, settings, leak=True)
    assert "cancel_reason" in spec["categorical_features"]
    summary = run_lifecycle(byo, instance)
    for family in ("sklearn", "torch"):
        gate = summary.candidates[family].gates["leakage"]
        assert not gate.passed and "cancel_reason" in gate.message, gate
