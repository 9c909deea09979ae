"""Monitoring feeds retraining in the lineage (batch_drift -> training_set), without
automation starting a retrain by itself: retrains stay the sensors' decision."""

import dagster as dg

from unified_assets.definitions import build_definitions
from unified_assets.partitions import BATCHES


def test_batch_drift_is_upstream_of_training_set(settings):
    defs = build_definitions(settings)
    graph = defs.resolve_asset_graph()
    assert dg.AssetKey("batch_drift") in graph.get(dg.AssetKey("training_set")).parent_keys


def test_a_new_drift_decision_does_not_start_training_by_automation(settings, instance):
    defs = build_definitions(settings)
    instance.add_dynamic_partitions(BATCHES.name, ["batch-00000"])
    first = dg.evaluate_automation_conditions(defs=defs, instance=instance)
    for asset in ("landed_batch", "batch_drift"):
        instance.report_runless_asset_event(
            dg.AssetMaterialization(asset_key=asset, partition="batch-00000"))
    tick = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=first.cursor)
    requested = {key for key in (defs.resolve_asset_graph().get_all_asset_keys())
                 if tick.get_requested_partitions(key)} | {
        key for key in defs.resolve_asset_graph().get_all_asset_keys()
        if tick.get_num_requested(key)}
    groups = {defs.resolve_asset_graph().get(k).group_name for k in requested}
    assert not groups & {"training", "evaluation", "deployment"}, requested
