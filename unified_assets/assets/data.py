"""Data group: each landed batch file becomes a partition, gated by blocking quality checks."""

from collections.abc import Iterator

import dagster as dg

from resources.artifact_store import ArtifactStore, ArtifactWriteError
from resources.dataset import DatasetResource
from unified_assets.compute import CPU_LIGHT
from unified_assets.metadata import OWNERS, markdown_table
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


@dg.asset(
    partitions_def=BATCHES,
    group_name="data",
    kinds={"parquet", "pandas"},
    owners=OWNERS,
    description=(
        "One landed batch of records (labelled, or awaiting late labels), read from the landing "
        "zone, validated against the dataset spec and stored as a curated Parquet file with a "
        "compact column profile (for drift). A batch that fails a check is recorded with its "
        "findings but never written for training. A file re-landed with other content is "
        "ingested again as a new version; metadata names the file and version it came from."
    ),
    check_specs=[
        # Partitioned like the asset: each batch's checks pass or fail on their own, so
        # automation skips exactly the rejected batches (and the UI lists checks per batch).
        dg.AssetCheckSpec(name, asset="landed_batch", blocking=True, partitions_def=BATCHES,
                          description=CHECK_DESCRIPTIONS[name])
        for name in CHECK_NAMES
    ],
    **CPU_LIGHT.asset_kwargs(),
)
def landed_batch(
    context: dg.AssetExecutionContext, dataset: DatasetResource, store: ArtifactStore
) -> Iterator[dg.MaterializeResult]:
    """Yields the materialization with its check results, then, for a rejected batch, fails
    the step with one line: the partition's run is red and its materialization says
    REJECTED first, while its metadata and findings stay recorded for the sensors, training
    (which lists it as excluded) and the CLI."""
    batch = context.partition_key
    spec = dataset.spec
    landed = dataset.batch(batch)
    path = dataset.fetch(landed)
    report = validate_batch_file(path, spec)
    dataset.check_unchanged(landed)
    record = {"batch": batch, "file": landed.uri, "version": landed.version, "run_id": context.run_id,
              "rows": report.rows, "passed": report.passed, "labelled": report.labelled,
              "findings": report.findings, "not_evaluated": report.not_evaluated}
    failed = report.failed_checks()
    metadata: dict = {
        # First, so the asset page reads "rejected" before "Materialized" is taken for healthy.
        "verdict": dg.MetadataValue.text(
            "passed every check" if report.passed else
            f"REJECTED: failed checks {', '.join(failed)}; kept in the landing zone, never "
            "trained on or monitored"),
        "source_file": dg.MetadataValue.path(str(path)),
        "source_uri": dg.MetadataValue.text(landed.uri),
        "source_version": dg.MetadataValue.text(landed.version),
        "rows": dg.MetadataValue.int(report.rows),
        "passed_quality_checks": report.passed,
        "labelled": report.labelled,
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
    yield dg.MaterializeResult(
        metadata=metadata,
        check_results=[
            dg.AssetCheckResult(
                check_name=name,
                passed=not problems,
                severity=dg.AssetCheckSeverity.ERROR,
                description=(f"not evaluated: {report.not_evaluated[name]}"
                             if name in report.not_evaluated else None),
                metadata={
                    "file": dg.MetadataValue.path(str(path)),
                    "evaluated": dg.MetadataValue.bool(name not in report.not_evaluated),
                    "source_version": dg.MetadataValue.text(landed.version),
                    "problems": dg.MetadataValue.int(len(problems)),
                    "details": dg.MetadataValue.md(
                        "\n".join(f"- {p}" for p in problems) or "no problems"
                    ),
                },
            )
            for name, problems in report.findings.items()
        ],
    )
    if not report.passed:
        raise dg.Failure(
            description=f"batch {batch} rejected: failed checks {', '.join(failed)} "
            f"({landed.uri}, version {landed.version}); it is kept in the landing zone and "
            "excluded from training and monitoring (findings in the check results)",
            metadata={"outcome": "rejected", "failed_checks": ", ".join(failed)},
            allow_retries=False,
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
        **({"label_rate": dg.MetadataValue.float(float(frame[spec.target].mean()))}
           if report.labelled else {"labels": dg.MetadataValue.text("awaiting late labels")}),
        "profile_columns": dg.MetadataValue.int(len(profile["columns"])),
        "columns": markdown_table(
            [{"column": c, "dtype": str(report.frame[c].dtype),
              "nulls": int(report.frame[c].isna().sum())} for c in spec.required_columns
             if c in report.frame.columns],
            ["column", "dtype", "nulls"],
        ),
    }
