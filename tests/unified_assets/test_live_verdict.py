import pytest

from unified_assets.ml.live_verdict import judge_live
from unified_assets.policy import LivePolicy, PolicyError, parse_policy

POLICY = LivePolicy(floor=0.72, max_drop_vs_previous=0.03, min_rows=200, min_positives=10)


@pytest.mark.parametrize("champion, previous, expected", [
    (0.80, None, "ok"),
    (0.80, 0.82, "ok"),           # within the allowed drop
    (0.70, None, "retrain"),      # below the floor, nothing to return to
    (0.70, 0.71, "retrain"),      # the world changed: the previous one is no better
    (0.78, 0.85, "rollback"),     # only the new champion is worse
    (0.60, 0.80, "rollback"),     # both rules: rolling back comes first
])
def test_live_verdicts(champion, previous, expected):
    verdict = judge_live({"roc_auc": champion}, None if previous is None else {"roc_auc": previous},
                         rows=1000, positives=50, policy=POLICY)
    assert verdict.action == expected


def test_lower_is_better_metrics_compare_the_other_way():
    policy = LivePolicy(metric="brier", floor=0.05, max_drop_vs_previous=0.01)
    assert judge_live({"brier": 0.06}, None, 1000, 50, policy).action == "retrain"
    assert judge_live({"brier": 0.04}, {"brier": 0.02}, 1000, 50, policy).action == "rollback"
    assert judge_live({"brier": 0.04}, {"brier": 0.035}, 1000, 50, policy).action == "ok"


@pytest.mark.parametrize("rows, positives", [(100, 50), (1000, 3), (1000, 1000)])
def test_too_little_evidence_only_informs(rows, positives):
    verdict = judge_live({"roc_auc": 0.1}, {"roc_auc": 0.9}, rows, positives, POLICY)
    assert verdict.action == "insufficient"


def test_undefined_metric_only_informs():
    assert judge_live({"roc_auc": None}, None, 1000, 50, POLICY).action == "insufficient"


def test_live_policy_is_validated_naming_the_key():
    with pytest.raises(PolicyError, match="live: floor: 1.5 is outside"):
        parse_policy({"live": {"floor": 1.5}})
    with pytest.raises(PolicyError, match="live.on_regression"):
        parse_policy({"live": {"on_regression": "shrug"}})
