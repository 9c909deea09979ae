"""Metadata a person reads: numbers rounded sensibly, lists that say what they leave out,
and evaluation checks whose descriptions say truthfully what blocks promotion."""

import math

import dagster as dg
import pytest

from unified_assets.assets.evaluation import build_evaluation_asset, check_result
from unified_assets.candidates import SHIPPED
from unified_assets.gates import BLOCKING_GATES, INFORMATIONAL, LEAKAGE, GateResult
from unified_assets.metadata import listed, markdown_table, numbers, rounded


@pytest.mark.parametrize(("value", "expected"), [
    (0.78114253001766, 0.7811),
    (0.0123456789, 0.01235),
    (123.456789, 123.5),
    (12345.678, 12346.0),
    (-0.78114253001766, -0.7811),
    (0.0, 0.0),
    (1.0, 1.0),
])
def test_floats_are_rounded_to_four_significant_digits_keeping_whole_numbers(value, expected):
    """Found: metadata showed roc_auc 0.78114253001766."""
    assert rounded(value) == expected
    (entry,) = numbers({"m": value}).values()
    assert entry.value == expected


def test_non_finite_floats_and_ints_pass_through():
    assert math.isnan(rounded(float("nan"))) and rounded(float("inf")) == float("inf")
    values = numbers({"n": 3, "flag": True, "gone": None})
    assert values["n"].value == 3 and values["flag"] is True
    assert values["gone"].value == "undefined"


def test_markdown_cells_are_rounded_the_same_way():
    table = markdown_table([{"metric": "roc_auc", "value": 0.78114253001766},
                            {"metric": "latency", "value": 12345.678}], ["metric", "value"])
    assert "| roc_auc | 0.7811 |" in table.value
    assert "| latency | 12346 |" in table.value


def test_listed_names_every_item_or_says_how_many_more():
    """Found: the drift reason named 5 of 7 drifted columns with no '...'."""
    columns = [f"c{i}" for i in range(7)]
    assert listed(columns[:5]) == "c0, c1, c2, c3, c4"
    assert listed(columns, limit=5) == "c0, c1, c2, c3, c4 and 2 more"
    assert listed(columns, limit=7) == ", ".join(columns)
    assert listed([]) == "none"


def _specs() -> dict[str, dg.AssetCheckSpec]:
    asset = build_evaluation_asset(SHIPPED["sklearn"])
    return {spec.name: spec for spec in asset.check_specs}


def test_evaluation_checks_say_which_gates_hold_promotion_back():
    """Found: the UI says "This is a non-blocking asset check" while the README calls the
    gates blocking. A Dagster-blocking check here would also stop the challenger, which must
    still compare the other candidate, so the description says where the block happens."""
    specs = _specs()
    for name in BLOCKING_GATES:
        assert not specs[name].blocking
        assert "Blocks promotion" in specs[name].description
        assert "challenger" in specs[name].description
        assert specs[name].metadata["blocks_promotion"] == "yes"
    assert "Informs only" in specs[INFORMATIONAL].description
    assert specs[INFORMATIONAL].metadata["blocks_promotion"] == "no"
    assert "promotion.leakage.blocking" in specs[LEAKAGE].description
    assert specs[LEAKAGE].metadata["blocks_promotion"] == "when promotion.leakage.blocking"


@pytest.mark.parametrize(("severity", "blocks"), [
    (dg.AssetCheckSeverity.ERROR, True), (dg.AssetCheckSeverity.WARN, False)])
def test_each_check_result_says_whether_it_holds_promotion_back(severity, blocks):
    gate = GateResult("quality_floors", False, "brier=0.1086 violates max 0.08 by 0.0286",
                      [{"metric": "brier", "value": 0.10861234, "threshold": 0.08}])
    result = check_result(gate, severity, blocks_promotion=blocks)
    assert result.metadata["blocks_promotion"].value is blocks
    assert "blocks_promotion" not in check_result(gate, severity).metadata
    assert "| brier | 0.1086 | 0.08 |" in result.metadata["values_vs_policy"].value


def test_the_evaluation_summary_names_what_held_it_back_and_what_only_warned():
    from dataclasses import replace

    from unified_assets.assets.evaluation import summary
    from unified_assets.values import ChampionNumbers, EvaluationReport, GateOutcome

    report = EvaluationReport(
        family="torch", model_name="m", version="5", passed_gates=False,
        champion=ChampionNumbers("3", {"roc_auc": 0.79}, []),
        overall={"roc_auc": 0.78114253001766, "brier": 0.031234},
        gates={"quality_floors": GateOutcome(False, "brier=0.1086 violates max 0.08"),
               "leakage": GateOutcome(False, "amount alone: ROC AUC 0.99"),
               "informational_metrics": GateOutcome(False, "f1 below 0.3")},
        segments=[{"segment": "region", "value": "APAC", "rows": 412, "roc_auc": 0.7012},
                  {"segment": "region", "value": "EU", "rows": 900, "roc_auc": 0.8}],
    )
    text = summary(replace(report, blocking_gates=("quality_floors", "leakage")))
    assert text.startswith("**torch v5 vs champion v3**: held back: quality_floors (brier=0.1086 "
                           "violates max 0.08); leakage (amount alone: ROC AUC 0.99) "
                           "(warnings: informational_metrics)")
    assert "ROC AUC 0.7811 (champion 0.79, -0.0089)" in text and "Brier 0.03123" in text
    assert "weakest segment: region=APAC ROC AUC 0.7012 on 412 rows" in text
    assert "(warnings: leakage, informational_metrics)" in summary(report)
