"""Partitions shared by assets, jobs and sensors: one dynamic partition per landed batch."""

import dagster as dg

BATCHES = dg.DynamicPartitionsDefinition(name="batches")
