"""`latest_materializations` reads many partitions' latest records at once and gives the same
answer as reading each partition on its own, including a partition materialized more often
than the others since, and one never materialized."""

import dagster as dg

from unified_assets.partitions import latest_materializations

PARTS = dg.DynamicPartitionsDefinition(name="parts")


@dg.asset(partitions_def=PARTS)
def counted(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
    return dg.MaterializeResult(metadata={"partition": context.partition_key})


def _one_by_one(instance, key, partitions):
    found = {}
    for partition in partitions:
        records = instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=key, asset_partitions=[partition]), limit=1).records
        if records:
            found[partition] = records[0]
    return found


def test_latest_materializations_match_reading_each_partition(instance):
    instance.add_dynamic_partitions(PARTS.name, ["a", "b", "c", "never"])
    for partition in ["a", "b", "c", "a", "a", "c"]:  # a three times, c twice, b once
        assert dg.materialize([counted], instance=instance, partition_key=partition).success
    wanted = ["a", "b", "c", "never"]
    together = latest_materializations(instance, counted.key, wanted)
    alone = _one_by_one(instance, counted.key, wanted)
    assert set(together) == {"a", "b", "c"}
    assert {p: r.storage_id for p, r in together.items()} == \
        {p: r.storage_id for p, r in alone.items()}
