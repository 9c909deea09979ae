"""Partitions shared by assets, jobs and sensors: one dynamic partition per landed batch."""

import dagster as dg

BATCHES = dg.DynamicPartitionsDefinition(name="batches")


def values_by_partition(context: dg.AssetExecutionContext, value) -> dict:
    """An input over the run's batches as partition -> value: a range run loads a dict, a
    one-batch run the value itself (None when the batch stored none)."""
    if isinstance(value, dict):
        return value
    return {context.partition_keys[0]: value} if value is not None else {}


def partition_result(context: dg.AssetExecutionContext, partition: str, metadata: dict
                     ) -> dg.MaterializeResult | dg.AssetMaterialization:
    """One batch's result: a one-batch run's own output (so assets after it in the same run
    run too), else a materialization of that partition within the range."""
    if context.has_partition_key:
        return dg.MaterializeResult(metadata=metadata)
    return dg.AssetMaterialization(asset_key=context.asset_key, partition=partition,
                                   metadata=metadata)
