"""New data: each complete file in the landing zone becomes a batch partition and is ingested.

The instance's dynamic partitions are the memory of what was seen, and each request has
a run key, so a replayed tick starts nothing twice.
"""


import dagster as dg

from resources.dataset import DatasetResource
from unified_assets.partitions import BATCHES


def build_landing_sensor(job) -> dg.SensorDefinition:
    @dg.sensor(
        name="landing_zone_sensor",
        job=job,
        minimum_interval_seconds=15,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="Adds a partition per new complete batch file and requests its ingestion.",
    )
    def landing_zone_sensor(
        context: dg.SensorEvaluationContext, dataset: DatasetResource
    ) -> dg.SensorResult | dg.SkipReason:
        files = dataset.batch_files()
        known = set(context.instance.get_dynamic_partitions(BATCHES.name))
        new = [key for key in files if key not in known]
        if not new:
            return dg.SkipReason(f"no new batch in {dataset.source_uri} ({len(files)} known)")
        return dg.SensorResult(
            run_requests=[
                dg.RunRequest(partition_key=key, run_key=f"ingest:{key}",
                              tags={"unified-ai/trigger": "new-batch",
                                    "unified-ai/batch-file": files[key].uri})
                for key in new
            ],
            dynamic_partitions_requests=[BATCHES.build_add_request(new)],
        )

    return landing_zone_sensor
