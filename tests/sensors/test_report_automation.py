"""Evidently's reports (drift per batch, quality per evaluated candidate: seconds to tens of
seconds each) queue behind the decisions: their own automation sensor launches them at a
lower run priority, and the lifecycle job that promotes never waits for them."""

import dagster as dg

from unified_assets.definitions import build_definitions


def test_reports_have_their_own_lower_priority_automation(settings):
    defs = build_definitions(settings)
    graph = defs.resolve_asset_graph()
    lifecycle = defs.resolve_sensor_def("lifecycle_automation")
    reports = defs.resolve_sensor_def("report_automation")
    report_keys = reports.asset_selection.resolve(graph)
    assert report_keys == {dg.AssetKey("drift_report"), dg.AssetKey("quality_report_sklearn"),
                           dg.AssetKey("quality_report_torch")}
    lifecycle_keys = lifecycle.asset_selection.resolve(graph)
    assert dg.AssetKey("batch_drift") in lifecycle_keys
    assert not lifecycle_keys & report_keys  # each asset is evaluated by exactly one sensor
    assert lifecycle_keys | report_keys == graph.get_all_asset_keys()
    assert int(reports.run_tags["dagster/priority"]) < int(
        lifecycle.run_tags.get("dagster/priority", "0"))
    assert reports.run_tags["unified-ai/trigger"] == "automation"


def test_the_lifecycle_job_promotes_without_building_a_report(settings):
    defs = build_definitions(settings)
    job = defs.resolve_job_def("train_evaluate_promote")
    planned = job.asset_layer.selected_asset_keys
    assert {dg.AssetKey("evaluation_sklearn"), dg.AssetKey("production_model")} <= planned
    assert not {k for k in planned if k.path[0].startswith(("quality_report_", "drift_report"))}
    graph = defs.resolve_asset_graph()
    # Each quality report follows its candidate's evaluation in the lineage.
    assert graph.get(dg.AssetKey("quality_report_torch")).parent_keys == {
        dg.AssetKey("evaluation_torch"), dg.AssetKey("training_set")}
