"""Leakage guard: a feature that encodes the target (train and holdout ROC AUC 1.000 in the
finding) is named; it warns by default and blocks when the policy says so."""

from __future__ import annotations

import numpy as np
import pandas as pd

from tests.policies import overlay, shipped_policy
from unified_assets.gates import LEAKAGE, judge
from unified_assets.ml.metrics import binary_metrics, single_feature_aucs
from unified_assets.policy import parse_policy
from unified_assets.values import EvaluationReport

RNG = np.random.default_rng(5)


def _frame(n: int = 4000) -> pd.DataFrame:
    y = (RNG.random(n) < 0.3).astype(int)
    return pd.DataFrame({
        "amount": RNG.normal(0, 1, n) + 0.8 * y,          # informative, not leaking
        "chargeback_flag": y * 2.0 + RNG.normal(0, 0.01, n),  # encodes the label
        "status": np.where(y == 1, "reversed", "settled"),  # categorical that encodes it
        "region": RNG.choice(["EU", "US", "APAC"], n),       # noise
        "row_ref": [f"r{i}" for i in range(n)],              # id-like, one row per level
        "fraud": y,
    })


def _split(frame):
    return frame.iloc[: len(frame) // 2], frame.iloc[len(frame) // 2:]


def test_single_feature_auc_names_numeric_and_categorical_leaks_not_ids():
    train, holdout = _split(_frame())
    aucs = single_feature_aucs(train, holdout, "fraud", ["amount", "chargeback_flag"],
                               ["status", "region", "row_ref"])
    assert aucs["chargeback_flag"] > 0.99 and aucs["status"] > 0.99
    assert 0.6 < aucs["amount"] < 0.8
    assert aucs["region"] < 0.6
    assert aucs["row_ref"] < 0.6, "levels unseen in training get the overall rate"


def test_a_reversed_feature_counts_too_and_missing_values_are_left_out():
    train, holdout = _split(_frame())
    holdout = holdout.assign(chargeback_flag=-holdout["chargeback_flag"])
    holdout.loc[holdout.index[:50], "chargeback_flag"] = np.nan
    aucs = single_feature_aucs(train, holdout, "fraud", ["chargeback_flag"], [])
    assert aucs["chargeback_flag"] > 0.99


def _report(frame) -> EvaluationReport:
    train, holdout = _split(frame)
    y = holdout["fraud"].to_numpy()
    scores = np.clip(0.3 + 0.4 * (holdout["amount"].to_numpy() > 0.5), 0, 1)
    return EvaluationReport(family="sklearn", model_name="m", version="1",
                            overall=binary_metrics(y, scores, 0.2),
                            feature_auc=single_feature_aucs(train, holdout, "fraud",
                                                            ["amount", "chargeback_flag"],
                                                            ["status"]))


def test_leakage_warns_naming_the_feature_without_holding_back_by_default():
    lenient = overlay(shipped_policy(), {"promotion": {"quality": {"roc_auc": {"min": 0.55}},
                                                       "segments": {"floor": None}}})
    lenient["promotion"]["quality"] = {"roc_auc": {"min": 0.55}}
    verdict = judge(_report(_frame()), parse_policy(lenient).promotion)
    gate = verdict.gates[LEAKAGE]
    assert not gate.passed
    assert "'chargeback_flag'" in gate.message and "'status'" in gate.message
    assert "'amount'" not in gate.message
    assert "warning only" in gate.message
    assert verdict.passed, "WARN by default: the blocking gates decide"

    lenient["promotion"]["leakage"] = {"blocking": True}
    blocked = judge(_report(_frame()), parse_policy(lenient).promotion)
    assert not blocked.passed
    assert any(f.startswith("leakage: possible leakage (blocking)") for f in blocked.failures())


def test_a_holdout_auc_at_the_limit_is_flagged_and_a_clean_model_is_not():
    policy = parse_policy(shipped_policy()).promotion
    y = np.array([0, 1] * 500)
    perfect = EvaluationReport(family="torch", model_name="m", version="3",
                               overall=binary_metrics(y, y * 0.9 + 0.05),
                               feature_auc={"amount": 0.7})
    gate = judge(perfect, policy).gates[LEAKAGE]
    assert not gate.passed and "holdout roc_auc=1.0000" in gate.message
    perfect.overall["roc_auc"] = 0.93
    clean = judge(perfect, policy).gates[LEAKAGE]
    assert clean.passed, clean.message
