"""Drift reports (Evidently, tens of seconds per batch) queue behind the drift decisions of a
landing of many batches: their own automation sensor launches them at a lower run priority."""

import dagster as dg

from unified_assets.definitions import build_definitions


def test_drift_reports_have_their_own_lower_priority_automation(settings):
    defs = build_definitions(settings)
    graph = defs.resolve_asset_graph()
    lifecycle = defs.resolve_sensor_def("lifecycle_automation")
    reports = defs.resolve_sensor_def("report_automation")
    report_keys = reports.asset_selection.resolve(graph)
    assert report_keys == {dg.AssetKey("drift_report")}
    lifecycle_keys = lifecycle.asset_selection.resolve(graph)
    assert dg.AssetKey("batch_drift") in lifecycle_keys
    assert not lifecycle_keys & report_keys  # each asset is evaluated by exactly one sensor
    assert lifecycle_keys | report_keys == graph.get_all_asset_keys()
    assert int(reports.run_tags["dagster/priority"]) < int(
        lifecycle.run_tags.get("dagster/priority", "0"))
    assert reports.run_tags["unified-ai/trigger"] == "automation"
