"""Evidently's full data-drift report per batch, for people. The drift sensor decides from
compact profiles in milliseconds; this reads rows and takes seconds, so it runs as its own
asset after `batch_drift`, never inside a sensor tick."""

import json
from collections.abc import Iterator

import dagster as dg

from resources.dataset import DatasetResource
from resources.mlflow_registry import MlflowRegistry
from resources.parquet_io import ParquetIOManager
from resources.policy import PolicyResource
from unified_assets.assets.data import LANDED_BATCH, batch_records, landed_batch
from unified_assets.assets.monitoring import batch_drift
from unified_assets.assets.quality_report import REPORT_TAG
from unified_assets.compute import CPU_REPORT
from unified_assets.metadata import OWNERS, fmt, listed, markdown_table, placement_metadata, rounded
from unified_assets.partitions import BATCHES, partition_result, values_by_partition

TABLE_COLUMNS = ["column", "method", "score", "threshold", "drifted (Evidently)",
                 "drifted (profile decision)"]


DRIFT_EXPERIMENT_SUFFIX = "drift"  # MLflow experiment `<experiment>-drift`: one run per report
REPORT_HTML, SUMMARY_JSON = "drift_report.html", "drift_summary.json"
LISTED_COLUMNS = 10  # drifted columns named in the summary line; all are in `drifted_columns`
# Reports per run when automation or a backfill asks for many batches: one process and one
# read of the reference for all of them, not one run each (a landing of 500 batches queued
# 500 report runs beside its ingestion). Evidently takes seconds per batch, so a run stays
# minutes long and each report is recorded as soon as it is written.
REPORTS_PER_RUN = 25


@dg.asset(
    partitions_def=BATCHES,
    deps=[batch_drift],
    # A frame (one batch) or partition -> frame (a range); a rejected batch has no value and
    # is named by the body.
    ins={"landed_batch": dg.AssetIn(key=landed_batch.key,
                                    metadata={"allow_missing_partitions": True})},
    backfill_policy=dg.BackfillPolicy.multi_run(max_partitions_per_run=REPORTS_PER_RUN),
    output_required=False,  # one materialization per batch, yielded as it is written
    group_name="monitoring",
    kinds={"evidently", "mlflow"},
    tags={REPORT_TAG: "evidently"},
    owners=OWNERS,
    description=(
        "Evidently's DataDriftPreset HTML report of one batch against the current champion's "
        "training batches (rows sampled to at most 20,000 per side), with the policy's drift "
        "thresholds and share, logged to an MLflow run (experiment `<experiment>-drift`) and "
        "linked from metadata with a one-line summary. For people: the retrain decision stays "
        "with `batch_drift`, whose per-column verdicts are shown next to Evidently's with their "
        "agreement."
    ),
    automation_condition=dg.AutomationCondition.eager(),
    **CPU_REPORT.asset_kwargs(),
)
def drift_report(
    context: dg.AssetExecutionContext,
    landed_batch,  # the batch's curated rows, or partition -> rows for a range
    dataset: DatasetResource,
    values_io_manager: dg.ResourceParam[ParquetIOManager],
    mlflow_registry: MlflowRegistry,
    policy: PolicyResource,
) -> Iterator[dg.AssetMaterialization | dg.MaterializeResult]:
    """Each batch of the run against one reference (the champion's training batches, read
    once). A batch without curated data (rejected) is named in the run's one-line failure
    after the others are recorded."""
    frames = values_by_partition(context, landed_batch)
    spec = dataset.spec
    version = mlflow_registry.alias_version(spec.name)
    batches = [b for b in mlflow_registry.training_batches(spec.name, version)
               if values_io_manager.exists(LANDED_BATCH, b)] if version is not None else []
    columns = spec.numeric_features + spec.categorical_features
    reference = _read_frames(values_io_manager, batches, columns) if batches else None
    where = placement_metadata(context, CPU_REPORT, policy.policy.placement)
    missing = []
    records = batch_records(context.instance, context.partition_keys)
    for batch in context.partition_keys:
        if batch not in frames or batch not in records or not records[batch].passed:
            missing.append(batch)
            continue
        if version is None:
            metadata = {"verdict": "no champion yet: nothing to compare"}
        elif reference is None:
            metadata = {"verdict": f"champion v{version} names no curated training batch: "
                                   "nothing to compare"}
        else:
            current = frames[batch][columns]
            current.attrs = {}  # its profile: batch_drift's input, not Evidently's
            metadata = _report(context, spec, batch, current, reference, version, batches,
                               mlflow_registry, policy) | where
        yield partition_result(context, batch, metadata)
    if missing:
        if len(missing) == 1:
            why = f"batch {missing[0]} has no curated data: it failed its quality checks"
        else:
            why = (f"batches {', '.join(missing)} have no curated data: they failed their "
                   "quality checks")
        raise dg.Failure(why, allow_retries=False)


def _report(context: dg.AssetExecutionContext, spec, batch: str, current, reference,
            version: str, batches: list[str], mlflow_registry: MlflowRegistry,
            policy: PolicyResource) -> dict:
    """Evidently's report of one batch, logged to its MLflow run; the metadata linking it."""
    from unified_assets.ml.evidently_report import evidently_drift

    drift = policy.policy.drift
    html, summary = evidently_drift(
        reference, current, spec.numeric_features, spec.categorical_features,
        num_threshold=drift.num_threshold, cat_threshold=drift.cat_threshold,
        drift_share=drift.drift_share,
    )
    profile = _profile_verdicts(context.instance, batch, version)
    links = mlflow_registry.log_report_run(
        experiment_suffix=DRIFT_EXPERIMENT_SUFFIX, run_name=batch,
        tags={"batch": batch, "champion_version": version, "model_name": spec.name,
              "dagster_run_id": context.run_id, "dataset_drift": str(summary["dataset_drift"])},
        metrics={"share_of_drifted_columns": summary["share_of_drifted_columns"],
                 "number_of_drifted_columns": summary["number_of_drifted_columns"]},
        folder="reports",
        files={REPORT_HTML: html, SUMMARY_JSON: json.dumps(
            summary | {"champion": version, "reference_batches": batches}, indent=2, default=str)},
    )
    report = links[REPORT_HTML]
    context.log.info(f"drift report of {batch} against champion v{version}: {report.page}")
    return {
        "summary": dg.MetadataValue.text(drift_summary(summary)),
        "report": dg.MetadataValue.url(report.page),
        "report_file": dg.MetadataValue.url(report.file),
        "mlflow_run": dg.MetadataValue.url(report.run_page),
    } | _metadata(version, batches, summary, profile)


def drift_summary(summary: dict) -> str:
    """One line: the verdict, how many columns drifted against the threshold, and which (all
    of them, or the first LISTED_COLUMNS and how many more)."""
    verdict = "detected" if summary["dataset_drift"] else "not detected"
    drifted = summary["drifted_columns"]
    line = (f"Dataset drift {verdict}: {summary['number_of_drifted_columns']} of "
            f"{summary['number_of_columns']} columns drifted (share "
            f"{fmt(summary['share_of_drifted_columns'])}, threshold {fmt(summary['drift_share'])})")
    return line + (f": {listed(drifted, LISTED_COLUMNS)}" if drifted else "")


def _read_frames(values: ParquetIOManager, batches: list[str], columns: list[str]):
    import pandas as pd

    return pd.concat([values.load(LANDED_BATCH, b, columns=columns) for b in batches],
                     ignore_index=True)


def _profile_verdicts(instance: dg.DagsterInstance, batch: str,
                      version: str) -> dict[str, bool] | None:
    """`batch_drift`'s per-column verdicts (its latest materialization's metadata), if it
    judged this batch against the same champion."""
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=batch_drift.key, asset_partitions=[batch]), limit=1).records
    if not records:
        return None
    metadata = records[0].asset_materialization.metadata
    if "columns_judged" not in metadata or "champion_version" not in metadata or \
            metadata["champion_version"].value != version:
        return None
    drifted = set(metadata["drifted_columns"].value)
    return {c: c in drifted for c in metadata["columns_judged"].value}


def _agreement(summary: dict, profile: dict[str, bool]) -> float | None:
    """Share of the columns judged by both on which Evidently and the profile decision agree."""
    same = [c["drifted"] == profile[c["column"]] for c in summary["columns"] if c["column"] in profile]
    return sum(same) / len(same) if same else None


def _table(summary: dict, profile: dict[str, bool] | None) -> dg.MarkdownMetadataValue:
    def verdict(drifted: bool | None) -> str | None:
        return None if drifted is None else ("**yes**" if drifted else "no")

    rows = [
        {"column": c["column"], "method": c["statistic"], "score": c["value"],
         "threshold": c["threshold"], "drifted (Evidently)": verdict(c["drifted"]),
         "drifted (profile decision)": verdict((profile or {}).get(c["column"]))}
        for c in summary["columns"]
    ]
    return markdown_table(rows, TABLE_COLUMNS)


def _metadata(version: str, batches: list[str], summary: dict, profile: dict[str, bool] | None) -> dict:
    rows = summary["rows"]
    metadata = {
        "dataset_drift": summary["dataset_drift"],
        "share_of_drifted_columns": dg.MetadataValue.float(rounded(summary["share_of_drifted_columns"])),
        "number_of_drifted_columns": dg.MetadataValue.int(summary["number_of_drifted_columns"]),
        "drifted_columns": dg.MetadataValue.json(summary["drifted_columns"]),
        "drift_share_threshold": dg.MetadataValue.float(rounded(summary["drift_share"])),
        "columns": _table(summary, profile),
        "champion_version": dg.MetadataValue.text(version),
        "reference_batches": dg.MetadataValue.json(batches),
        "reference_rows": dg.MetadataValue.int(rows["reference"]),
        "current_rows": dg.MetadataValue.int(rows["current"]),
        "rows_compared": dg.MetadataValue.text(
            f"{rows['reference_compared']:,} reference, {rows['current_compared']:,} current"
            + (f" (sampled to at most {rows['sample_cap']:,} per side)" if rows["sampled"] else "")
        ),
        "sampled": rows["sampled"],
    }
    agreement = _agreement(summary, profile) if profile else None
    if agreement is not None:
        metadata["agreement_with_profile_decision"] = dg.MetadataValue.float(rounded(agreement))
    else:
        metadata["profile_decision"] = dg.MetadataValue.text(
            "not available: batch_drift has not judged this batch against this champion")
    return metadata
