"""Quality bounds relative to the data's base rate (brier_skill, pr_auc_lift) and the leakage
rule are validated like every other gate: one no model can pass, or one that lets a
constant forecast (a model ranking at random) pass, is refused at load."""

from __future__ import annotations

import pytest
import yaml

from tests.policies import overlay, shipped_policy
from unified_assets.policy import PolicyError, load_policy


def _refused(tmp_path, overrides: dict, *fragments: str) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text(yaml.safe_dump(overlay(shipped_policy(), overrides)))
    with pytest.raises(PolicyError) as error:
        load_policy(path)
    for fragment in (str(path), *fragments):
        assert fragment in str(error.value)


def test_the_shipped_policy_gates_on_skill_not_on_an_absolute_brier():
    quality = load_policy().promotion.quality
    assert "brier" not in quality, "an absolute Brier ceiling depends on the positive rate"
    assert quality["brier_skill"].min > 0, "beats the base-rate forecast (informs by default)"
    assert quality["pr_auc_lift"].blocking and quality["pr_auc_lift"].min > 1
    assert "pr_auc" not in quality, "a random model's PR AUC is the positive rate"


@pytest.mark.parametrize("bound, fragments", [
    ({"brier_skill": {"min": 0.0}}, ["quality.brier_skill.min: 0.0", "switches itself off"]),
    ({"brier_skill": {"min": -0.2}}, ["quality.brier_skill.min: -0.2", "constant forecast"]),
    ({"brier_skill": {"min": 1.2}}, ["quality.brier_skill.min: 1.2", "no model can pass"]),
    ({"brier_skill": {"max": 1.0}}, ["quality.brier_skill.max: 1.0", "lets every model pass"]),
    ({"pr_auc_lift": {"min": 1.0}}, ["quality.pr_auc_lift.min: 1.0", "ranking at random"]),
])
def test_a_relative_bound_that_cannot_pass_or_passes_a_useless_model_is_refused(tmp_path, bound,
                                                                                 fragments):
    _refused(tmp_path, {"promotion": {"quality": bound}}, *fragments)


def test_absolute_limits_stay_possible(tmp_path):
    path = tmp_path / "policy.yaml"
    path.write_text(yaml.safe_dump(overlay(shipped_policy(), {"promotion": {"quality": {
        "brier": {"max": 0.08}, "pr_auc": {"min": 0.1}, "brier_skill": {"min": 0.2}}}})))
    quality = load_policy(path).promotion.quality
    assert quality["brier"].max == 0.08 and quality["pr_auc"].min == 0.1


@pytest.mark.parametrize("leakage, fragments", [
    ({"max_holdout_auc": 0.5}, ["max_holdout_auc: 0.5", "every model"]),
    ({"max_single_feature_auc": 1.01}, ["max_single_feature_auc: 1.01", "never trigger"]),
    ({"max_feature_auc": 0.9}, ["leakage.max_feature_auc"]),
])
def test_a_leakage_rule_that_flags_everything_or_nothing_is_refused(tmp_path, leakage, fragments):
    _refused(tmp_path, {"promotion": {"leakage": leakage}}, *fragments)


def test_leakage_warns_by_default():
    leakage = load_policy().promotion.leakage
    assert leakage.blocking is False
    assert (leakage.max_holdout_auc, leakage.max_single_feature_auc) == (0.999, 0.98)
