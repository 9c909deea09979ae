"""Gates judged relative to the data: the Brier skill score against the base-rate forecast,
PR AUC lift over chance, and a candidate that failed never blocks the one that passed."""

from __future__ import annotations

import numpy as np
import pytest

from tests.policies import overlay, shipped_policy
from unified_assets.gates import LEAKAGE, QUALITY, judge, select_challenger
from unified_assets.ml.metrics import binary_metrics, brier_skill
from unified_assets.policy import parse_policy
from unified_assets.values import EvaluationReport

RNG = np.random.default_rng(11)


def _promotion(overrides: dict | None = None):
    return parse_policy(overlay(shipped_policy(), overrides or {})).promotion


def _calibrated(rate: float, n: int = 20_000, strength: float = 1.8):
    """Labels drawn from calibrated scores: ROC AUC about 0.85 at this strength."""
    logit = np.log(rate / (1 - rate)) + strength * RNG.standard_normal(n)
    scores = 1 / (1 + np.exp(-logit))
    return (RNG.random(n) < scores).astype(int), scores


def _report(y, scores, family="sklearn", version="1") -> EvaluationReport:
    return EvaluationReport(family=family, model_name="m", version=version,
                            overall=binary_metrics(y, scores, 0.2))


def test_brier_skill_is_zero_for_the_base_rate_forecast_and_one_for_a_perfect_one():
    y = np.array([0, 0, 0, 1])
    constant = binary_metrics(y, np.full(4, 0.25))
    assert constant["brier"] == pytest.approx(0.25 * 0.75)
    assert constant["brier_skill"] == pytest.approx(0.0)
    assert binary_metrics(y, y.astype(float))["brier_skill"] == pytest.approx(1.0)
    assert constant["pr_auc_lift"] == pytest.approx(1.0), "a constant ranks at random"
    assert binary_metrics(np.zeros(3), np.full(3, 0.1))["brier_skill"] is None
    with pytest.raises(ValueError, match="both classes"):
        brier_skill(0.1, 0.0)


def test_a_good_calibrated_model_on_balanced_data_passes_quality():
    """The finding: at 27% positives a calibrated ROC AUC 0.85 model has Brier ~0.15, far
    above the old absolute ceiling 0.08 it could never meet; its skill is well above 0."""
    y, scores = _calibrated(0.27)
    report = _report(y, scores)
    assert report.overall["roc_auc"] > 0.8 and report.overall["brier"] > 0.08
    gate = judge(report, _promotion()).gates[QUALITY]
    assert gate.passed, gate.message


def test_a_useless_model_on_rare_positives_fails_quality_and_says_by_how_much():
    """The other side: at 1% positives the constant forecast has Brier 0.0099, under any
    absolute ceiling; judged by skill it is held back."""
    y = (RNG.random(20_000) < 0.01).astype(int)
    report = _report(y, np.full(len(y), 0.01) + RNG.normal(0, 1e-4, len(y)))
    assert report.overall["brier"] < 0.08
    gate = judge(report, _promotion({"promotion": {"quality": {
        "roc_auc": {"min": 0.51}, "brier_skill": {"min": 0.001, "blocking": True}}}})).gates[QUALITY]
    assert not gate.passed
    assert "brier_skill=" in gate.message and "violates min 0.001" in gate.message
    assert "pr_auc_lift=" in gate.message


def test_a_candidate_that_failed_fails_every_gate_and_the_other_is_selected():
    y, scores = _calibrated(0.27)
    good = _report(y, scores, family="torch", version="2")
    failed = EvaluationReport(family="sklearn", model_name="m", version=None, error="training "
                              "failed: ValueError: could not convert string to float: 'n/a'")
    chosen, verdicts = select_challenger([failed, good], _promotion())
    assert chosen is good
    assert not verdicts["sklearn"].passed
    assert verdicts["sklearn"].failures() == [f"not evaluated: {failed.error}"]
    assert all(not g.passed for g in verdicts["sklearn"].gates.values())
    assert LEAKAGE in verdicts["torch"].gates


def test_the_challenger_reason_says_why_this_one_when_several_passed():
    """Found: 'logistic v1 passed every gate' though all three passed; nothing said why it."""
    from unified_assets.gates import choice_reason

    y, scores = _calibrated(0.27)
    strong = _report(y, scores, family="torch", version="5")
    weak = _report(y, np.clip(scores + RNG.normal(0, 0.3, len(y)), 0, 1), family="sklearn",
                   version="4")
    chosen, verdicts = select_challenger([weak, strong], _promotion())
    assert chosen is strong
    reason = choice_reason(chosen, [weak, strong], verdicts, "roc_auc")
    assert reason.startswith("torch v5 passed every gate and has the best roc_auc of the 2")
    assert f"sklearn v4 {weak.overall['roc_auc']:.4f}" in reason
    alone, verdicts = select_challenger([strong], _promotion())
    assert choice_reason(alone, [strong], verdicts, "roc_auc") == "torch v5 passed every gate"
