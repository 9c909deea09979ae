"""Data group: each landed batch file becomes a partition, gated by blocking quality checks."""

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import dagster as dg

from resources.dataset import DatasetResource, LandedFile
from resources.parquet_io import VALUES_IO_MANAGER, ParquetIOManager
from unified_assets.compute import CPU_LIGHT
from unified_assets.metadata import OWNERS, markdown_table, placement_metadata, rounded
from unified_assets.ml.batch_validation import CHECK_NAMES, BatchReport, curated, validate_batch_file
from unified_assets.ml.dataset_spec import DatasetSpec
from unified_assets.partitions import BATCHES, latest_materializations

if TYPE_CHECKING:
    import pandas as pd

LANDED_BATCH = dg.AssetKey("landed_batch")

CHECK_DESCRIPTIONS = {
    "schema": "The file reads in the spec's format, has rows, every required column, numeric "
    "features numeric.",
    "ids": "Every row has its own id (the spec's id_column present, never null, blank or "
    "duplicated): ids decide the holdout side and match late labels.",
    "nulls": "Features and segments are no more null than the spec allows (null_limits per "
    "column, else max_null_fraction).",
    "ranges": "Numeric features are finite (no +/-inf) and lie within the spec's ranges.",
    "label": "The label is binary (0/1, booleans, or the spec's positive_label and one other "
    "value) and present on every row, or absent on every row when the spec's labels are late.",
}


@dataclass(frozen=True)
class BatchRecord:
    """What the latest `landed_batch` materialization of one batch says (its metadata): the
    evidence every reader of batch validity uses, instead of files beside the data."""

    batch: str
    passed: bool
    labelled: bool
    version: str | None
    findings: dict[str, list[str]]  # failed check -> problems (checks that ran only)
    run_id: str


def batch_record(instance: dg.DagsterInstance, batch: str) -> BatchRecord | None:
    """The batch's latest ingestion, or None when it was never ingested."""
    return batch_records(instance, [batch]).get(batch)


def batch_records(instance: dg.DagsterInstance, batches: list[str]) -> dict[str, BatchRecord]:
    """`batch_record` of many batches, read together (absent: never ingested)."""
    return {batch: _batch_record(batch, record) for batch, record in
            latest_materializations(instance, LANDED_BATCH, batches).items()}


def _batch_record(batch: str, record: dg.EventLogRecord) -> BatchRecord:
    metadata = record.asset_materialization.metadata

    def value(key: str, default=None):
        return metadata[key].value if key in metadata else default

    return BatchRecord(
        batch=batch, passed=bool(value("passed_quality_checks", False)),
        labelled=bool(value("labelled", True)), version=value("source_version"),
        findings=dict(value("findings", {}) or {}), run_id=record.run_id)


def batch_passed(instance: dg.DagsterInstance, batch: str) -> bool:
    """The batch's latest ingested version passed every check (its value is the curated
    rows of that version; a rejected version stores none)."""
    record = batch_record(instance, batch)
    return record is not None and record.passed


def batch_findings(instance: dg.DagsterInstance, batch: str, with_check: bool = False) -> list[str]:
    """What is wrong with an ingested batch, one line per finding ('file: column ...: what',
    prefixed 'check: ' with `with_check`), from its latest materialization, for the demo and
    the CLI to print. Checks that could not run are left out: the finding that stopped them
    is listed. Empty when the batch passed or was never ingested."""
    record = batch_record(instance, batch)
    if record is None:
        return []
    return [f"{check}: {p}" if with_check else p
            for check, problems in record.findings.items() for p in problems]


# Batches per ingestion run: a run costs seconds (process, plan, events), a batch of
# thousands of rows milliseconds, so new batches are ingested many per run (the landing
# sensor requests partition ranges; backfills chunk the same way).
PARTITIONS_PER_RUN = 100
REJECTED_TAG = "unified-ai/rejected-batches"


@dg.asset(
    partitions_def=BATCHES,
    group_name="data",
    kinds={"parquet", "pandas"},
    owners=OWNERS,
    description=(
        "One landed batch of records (labelled, or awaiting late labels), read from the landing "
        "zone and validated against the dataset spec. Its value is the curated rows (Parquet, "
        "via the values IO manager) carrying a compact column profile (for drift). A batch "
        "that fails a check is recorded with its findings (failed blocking checks, verdict "
        "REJECTED) and stores no value: it is never trained on or monitored. "
        "A file re-landed with other content is ingested again as a new version; metadata "
        "names the file and version it came from. One run ingests many batches."
    ),
    check_specs=[
        # Partitioned like the asset: each batch's checks pass or fail on their own, so
        # automation skips exactly the rejected batches (and the UI lists checks per batch).
        dg.AssetCheckSpec(name, asset="landed_batch", blocking=True, partitions_def=BATCHES,
                          description=CHECK_DESCRIPTIONS[name])
        for name in CHECK_NAMES
    ],
    backfill_policy=dg.BackfillPolicy.multi_run(max_partitions_per_run=PARTITIONS_PER_RUN),
    # Results are yielded per partition (a range run has one output for many partitions).
    output_required=False,
    io_manager_key=VALUES_IO_MANAGER,
    **CPU_LIGHT.asset_kwargs(),
)
def landed_batch(
    context: dg.AssetExecutionContext, dataset: DatasetResource,
    values_io_manager: dg.ResourceParam[ParquetIOManager],
) -> Iterator[dg.Output | dg.AssetCheckEvaluation]:
    """Ingests every batch of the run's partitions (one, or a range), each with its own
    materialization metadata and check results. The value of a passing batch is its curated
    rows, carrying their column profile in `attrs`; a rejected batch stores no value. A
    rejected batch does not fail the run: it is marked by its failed blocking checks, a
    materialization whose first entry is the REJECTED verdict, and the run tag
    `unified-ai/rejected-batches`, while the other batches of the run are ingested. Checks
    that could not run are not reported, so the UI shows them skipped. A batch whose value
    cannot be stored (a full disk) fails the run, naming it, and nothing of the run is
    recorded as materialized: the landing sensor retries."""
    rejected: list[str] = []
    where = placement_metadata(context, CPU_LIGHT)  # one step, one placement for its batches
    layout = _known_layout(context.instance, values_io_manager)
    curated_rows: dict[str, pd.DataFrame] = {}
    reports: dict[str, tuple[BatchReport, str, str]] = {}
    listed = dataset.batches(context.partition_keys)  # one listing for the run's batches
    for batch in context.partition_keys:
        report, path, version, frame = _ingest_one(
            context, dataset, dataset.current(listed[batch]), layout,
            where, _location(values_io_manager, batch))
        reports[batch] = (report, path, version)
        if frame is None:
            rejected.append(batch)
            continue
        layout = layout or frame.attrs["profile"]  # the first valid batch fixes the layout
        curated_rows[batch] = frame
    # One output for every batch of the run: the IO manager stores each passing batch's rows
    # and removes the value an earlier, passing version of a now rejected batch left.
    yield dg.Output(curated_rows)
    yield from _check_evaluations(context, reports)
    for output_name in context.assets_def.check_specs_by_output_name:
        yield dg.Output(None, output_name=output_name)  # check outputs: results are events
    if rejected:
        context.instance.add_run_tags(context.run_id, {REJECTED_TAG: _listed(rejected)})
        context.log.warning(f"{len(rejected)} of {len(context.partition_keys)} batch(es) "
                            f"rejected by their checks: {_listed(rejected)}")


def _listed(batches: list[str], limit: int = 20) -> str:
    shown = ", ".join(batches[:limit])
    return shown + (f" and {len(batches) - limit} more" if len(batches) > limit else "")


def _location(values: ParquetIOManager, batch: str) -> dg.MetadataValue:
    uri = values.uri(LANDED_BATCH, batch)
    return dg.MetadataValue.url(uri) if uri.startswith("s3") else \
        dg.MetadataValue.path(uri.removeprefix("file://"))


def _known_layout(instance: dg.DagsterInstance, values: ParquetIOManager) -> dict | None:
    """The profile of the earliest ingested valid batch whose value is still stored: every
    batch is profiled on its layout (None before the first valid batch)."""
    first_layout = None
    for record in instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=LANDED_BATCH), limit=10_000, ascending=True).records:
        metadata = record.asset_materialization.metadata
        if "profile_layout_id" not in metadata:
            continue
        layout_id = metadata["profile_layout_id"].value
        first_layout = first_layout or layout_id
        if layout_id != first_layout:
            continue
        batch = record.asset_materialization.partition
        if values.exists(LANDED_BATCH, batch):
            profile = values.attrs(LANDED_BATCH, batch).get("profile")
            if profile and profile.get("layout_id") == first_layout:
                return profile
    return None


def _ingest_one(context: dg.AssetExecutionContext, dataset: DatasetResource,
                landed: LandedFile, layout: dict | None, where: dict,
                value: dg.MetadataValue) -> "tuple[BatchReport, str, str, pd.DataFrame | None]":
    """Validate, curate and profile one batch; record its metadata on its partition (with
    where its `value` is stored when it passed), in one call: each call resolves the run's
    partition range again. Returns the report, the file read, its version and the curated
    rows (None when rejected)."""
    spec, batch = dataset.spec, landed.key
    path = dataset.fetch(landed)
    report = validate_batch_file(path, spec)
    dataset.check_unchanged(landed)
    failed = report.failed_checks()
    skipped = f"; not run: {', '.join(report.not_evaluated)}" if report.not_evaluated else ""
    metadata: dict = {
        # First, so the asset page reads "rejected" before "Materialized" is taken for healthy.
        "verdict": dg.MetadataValue.text(
            "passed every check" if report.passed else
            f"REJECTED: failed checks {', '.join(failed)}{skipped}; kept in the landing zone, "
            "never trained on or monitored"),
        "source_file": dg.MetadataValue.path(str(path)),
        "source_uri": dg.MetadataValue.text(landed.uri),
        "source_version": dg.MetadataValue.text(landed.version),
        "rows": dg.MetadataValue.int(report.rows),
        "passed_quality_checks": report.passed,
        "labelled": report.labelled,
        # What `batch_findings` prints: the problems of the checks that ran and failed.
        "findings": dg.MetadataValue.json(
            {check: problems for check, problems in report.findings.items()
             if problems and check not in report.not_evaluated}),
        **where,
    }
    frame = None
    if report.passed:
        frame, described = _curate(report, spec, batch, layout)
        metadata |= described | {"value": value}
    context.add_asset_metadata(metadata, partition_key=batch)
    return report, str(path), landed.version, frame


def _check_evaluations(context: dg.AssetExecutionContext,
                       reports: dict[str, tuple[BatchReport, str, str]]) -> Iterator:
    """Each batch's check results, pointing at the materialization the output just recorded,
    as Dagster's own check results do: automation's "blocking checks passed" reads them
    against the partition's latest one."""
    from dagster._core.definitions.asset_checks.asset_check_evaluation import (
        AssetCheckEvaluationTargetMaterializationData,
    )

    key = context.asset_key
    latest = latest_materializations(context.instance, key, list(reports))
    for batch, (report, path, version) in reports.items():
        stored = latest[batch]
        target = AssetCheckEvaluationTargetMaterializationData(
            run_id=stored.run_id, storage_id=stored.storage_id, timestamp=stored.timestamp)
        for name, problems in report.findings.items():
            if name in report.not_evaluated:
                continue  # did not run: shown skipped (the run succeeds), the schema finding says why
            yield dg.AssetCheckEvaluation(
                asset_key=key, check_name=name, passed=not problems, partition=batch,
                severity=dg.AssetCheckSeverity.ERROR, target_materialization_data=target,
                # The spec is blocking (automation never monitors or trains on a rejected
                # batch); the event is not, so one rejected batch does not fail the run.
                blocking=False,
                description=f"{len(problems)} problem(s) in {Path(path).name}" if problems
                else None,
                metadata={
                    "file": dg.MetadataValue.path(path),
                    "source_version": dg.MetadataValue.text(version),
                    "problems": dg.MetadataValue.int(len(problems)),
                    "details": dg.MetadataValue.md(
                        "\n".join(f"- {p}" for p in problems) or "no problems"),
                },
            )


def _curate(report: BatchReport, spec: DatasetSpec, batch: str,
            layout: dict | None) -> "tuple[pd.DataFrame, dict]":
    """Curated rows of a passing batch, their profile (in `attrs`, on the dataset's layout)
    and the metadata describing them."""
    from unified_assets.ml.drift_judgement import batch_profile

    frame = curated(report.frame, spec, batch)
    profile = batch_profile(frame, spec, layout)
    frame.attrs["profile"] = profile
    return frame, {
        **({"label_rate": dg.MetadataValue.float(rounded(float(frame[spec.target].mean())))}
           if report.labelled else {"labels": dg.MetadataValue.text("awaiting late labels")}),
        "profile_columns": dg.MetadataValue.int(len(profile["columns"])),
        "profile_layout_id": dg.MetadataValue.text(profile["layout_id"]),
        "columns": markdown_table(
            [{"column": c, "dtype": str(report.frame[c].dtype),
              "nulls": int(report.frame[c].isna().sum())} for c in spec.required_columns
             if c in report.frame.columns],
            ["column", "dtype", "nulls"],
        ),
    }
