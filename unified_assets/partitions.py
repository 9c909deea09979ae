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


READ_CHUNK = 500  # partitions per query (well under SQLite's bound-parameter limit)


def latest_materializations(instance: dg.DagsterInstance, asset_key: dg.AssetKey,
                            partitions: list[str]) -> dict[str, dg.EventLogRecord]:
    """Each partition's latest materialization (absent: never materialized), read for many
    partitions at once: one query per chunk instead of one per partition. A partition whose
    latest record the chunk's query did not reach (others of the chunk materialized more
    often since) is read on its own."""
    wanted = list(dict.fromkeys(partitions))
    found: dict[str, dg.EventLogRecord] = {}
    for start in range(0, len(wanted), READ_CHUNK):
        chunk = wanted[start:start + READ_CHUNK]
        for record in instance.fetch_materializations(
                dg.AssetRecordsFilter(asset_key=asset_key, asset_partitions=chunk),
                limit=len(chunk)).records:
            found.setdefault(record.asset_materialization.partition, record)
    for partition in wanted:
        if partition not in found:
            records = instance.fetch_materializations(
                dg.AssetRecordsFilter(asset_key=asset_key, asset_partitions=[partition]),
                limit=1).records
            if records:
                found[partition] = records[0]
    return found
