"""Data group: each landed batch file becomes a partition, gated by blocking quality checks."""

from collections.abc import Iterator
from pathlib import Path

import dagster as dg

from resources.artifact_store import ArtifactStore, ArtifactWriteError
from resources.dataset import DatasetResource
from unified_assets.compute import CPU_LIGHT
from unified_assets.metadata import OWNERS, markdown_table, placement_metadata, rounded
from unified_assets.ml.batch_validation import CHECK_NAMES, BatchReport, curated, validate_batch_file
from unified_assets.ml.dataset_spec import DatasetSpec
from unified_assets.partitions import BATCHES

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


def curated_key(batch: str) -> str:
    return f"batches/{batch}.parquet"


def report_key(batch: str) -> str:
    return f"batches/{batch}.report.json"


def batch_passed(store: ArtifactStore, batch: str) -> bool:
    """The batch's latest ingested version passed every check. Its curated file or profile
    existing is not enough: they stay from an earlier version when a re-landed one fails."""
    return store.exists(report_key(batch)) and bool(store.read_json(report_key(batch))["passed"])


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
        "zone, validated against the dataset spec and stored as a curated Parquet file with a "
        "compact column profile (for drift). A batch that fails a check is recorded with its "
        "findings (failed blocking checks, verdict REJECTED) but never written for training. "
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
    **CPU_LIGHT.asset_kwargs(),
)
def landed_batch(
    context: dg.AssetExecutionContext, dataset: DatasetResource, store: ArtifactStore
) -> Iterator[dg.AssetMaterialization | dg.AssetCheckEvaluation | dg.Output]:
    """Ingests every batch of the run's partitions (one, or a range), each with its own
    materialization and check results. A rejected batch does not fail the run: it is marked
    by its failed blocking checks, a materialization whose first entry is the REJECTED
    verdict, and the run tag `unified-ai/rejected-batches`, while the other batches of the
    run are ingested. Checks that could not run are not reported, so the UI shows them
    skipped. A batch that cannot be stored (a full disk) fails the run naming it; batches
    stored before it stay stored."""
    rejected: list[str] = []
    where = placement_metadata(context, CPU_LIGHT)  # one step, one placement for its batches
    for batch in context.partition_keys:
        events, passed = _ingest_one(context, dataset, store, batch, where)
        yield from events
        if not passed:
            rejected.append(batch)
    for output_name in context.assets_def.check_specs_by_output_name:
        yield dg.Output(None, output_name=output_name)  # check outputs: results are events
    if rejected:
        context.instance.add_run_tags(context.run_id, {REJECTED_TAG: _listed(rejected)})
        context.log.warning(f"{len(rejected)} of {len(context.partition_keys)} batch(es) "
                            f"rejected by their checks: {_listed(rejected)}")


def _listed(batches: list[str], limit: int = 20) -> str:
    shown = ", ".join(batches[:limit])
    return shown + (f" and {len(batches) - limit} more" if len(batches) > limit else "")


def _ingest_one(context: dg.AssetExecutionContext, dataset: DatasetResource,
                store: ArtifactStore, batch: str, where: dict) -> tuple[Iterator, bool]:
    """Validate, store and describe one batch: its events (materialization first, then the
    checks that ran, pointing at it) and whether it passed."""
    spec = dataset.spec
    landed = dataset.batch(batch)
    path = dataset.fetch(landed)
    report = validate_batch_file(path, spec)
    dataset.check_unchanged(landed)
    record = {"batch": batch, "file": landed.uri, "version": landed.version, "run_id": context.run_id,
              "rows": report.rows, "passed": report.passed, "labelled": report.labelled,
              "findings": report.findings, "not_evaluated": report.not_evaluated}
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
        **where,
    }
    try:
        if report.passed:
            metadata |= _store_curated(store, report, spec, batch, record)
        store.write_json(report_key(batch), record)  # last: the report is what marks it passed
    except ArtifactWriteError as error:
        raise dg.Failure(
            description=f"batch {batch} ({landed.uri}, version {landed.version}) was not stored: "
            f"{error}. Nothing is marked as passed; the landing sensor retries the ingestion.",
            metadata={"source_uri": landed.uri, "source_version": landed.version},
        ) from error
    return _events(context, batch, metadata, report, path, landed.version), report.passed


def _events(context: dg.AssetExecutionContext, batch: str, metadata: dict, report: BatchReport,
            path, version: str) -> Iterator:
    from dagster._core.definitions.asset_checks.asset_check_evaluation import (
        AssetCheckEvaluationTargetMaterializationData,
    )

    key = context.asset_key
    yield dg.AssetMaterialization(asset_key=key, partition=batch, metadata=metadata)
    # The checks point at the materialization just stored, as Dagster's own check results do:
    # automation's "blocking checks passed" reads them against the partition's latest one.
    (stored,) = context.instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=key, asset_partitions=[batch]), limit=1).records
    target = AssetCheckEvaluationTargetMaterializationData(
        run_id=stored.run_id, storage_id=stored.storage_id, timestamp=stored.timestamp)
    for name, problems in report.findings.items():
        if name in report.not_evaluated:
            continue  # did not run: shown skipped (the run succeeds), the schema finding says why
        yield dg.AssetCheckEvaluation(
            asset_key=key, check_name=name, passed=not problems, partition=batch,
            severity=dg.AssetCheckSeverity.ERROR, target_materialization_data=target,
            # The spec is blocking (automation never monitors or trains on a rejected batch);
            # the event is not, so one rejected batch does not fail the other batches' run.
            blocking=False,
            description=f"{len(problems)} problem(s) in {Path(str(path)).name}" if problems
            else None,
            metadata={
                "file": dg.MetadataValue.path(str(path)),
                "source_version": dg.MetadataValue.text(version),
                "problems": dg.MetadataValue.int(len(problems)),
                "details": dg.MetadataValue.md(
                    "\n".join(f"- {p}" for p in problems) or "no problems"),
            },
        )


def batch_findings(store: ArtifactStore, batch: str) -> list[str]:
    """What is wrong with an ingested batch, one line per finding ('file: column ...: what'),
    read from its stored ingestion report, for the demo and the CLI to print. Checks that
    could not run are left out: the finding that stopped them is listed. Empty when the batch
    passed or was never ingested."""
    if not store.exists(report_key(batch)):
        return []
    report = store.read_json(report_key(batch))
    skipped = set(report.get("not_evaluated", {}))
    return [problem for check, problems in report.get("findings", {}).items()
            if check not in skipped for problem in problems]


def _store_curated(store: ArtifactStore, report: BatchReport, spec: DatasetSpec, batch: str,
                   record: dict) -> dict:
    """Curated rows and profile of a passing batch. An earlier version's report is replaced
    by one that is not passed first, so a write failing half way never leaves a passed
    report describing other data."""
    from unified_assets.monitoring import store_batch_profile

    store.write_json(report_key(batch), {
        **record, "passed": False, "state": "ingesting",
        "findings": {"ingestion": [f"version {record['version']} of {record['file']}: ingestion "
                                   f"started in run {record['run_id']} and did not finish"]}})
    frame = curated(report.frame, spec, batch)
    uri = store.write_frame(curated_key(batch), frame)
    profile = store_batch_profile(store, frame, spec, batch)
    return {
        "curated_uri": dg.MetadataValue.url(uri) if uri.startswith("s3") else
        dg.MetadataValue.path(store.local_path(curated_key(batch))),
        **({"label_rate": dg.MetadataValue.float(rounded(float(frame[spec.target].mean())))}
           if report.labelled else {"labels": dg.MetadataValue.text("awaiting late labels")}),
        "profile_columns": dg.MetadataValue.int(len(profile["columns"])),
        "columns": markdown_table(
            [{"column": c, "dtype": str(report.frame[c].dtype),
              "nulls": int(report.frame[c].isna().sum())} for c in spec.required_columns
             if c in report.frame.columns],
            ["column", "dtype", "nulls"],
        ),
    }
