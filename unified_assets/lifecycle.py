"""Run the lifecycle headless through Dagster: ingest every landed batch, then train,
evaluate and promote. Used by `unified-ai demo`, the tests and the benchmarks."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import dagster as dg

from sensors.landing import FILE_TAG, VERSION_TAG, latest_metadata
from unified_assets.assets.data import landed_batch
from unified_assets.definitions import build_definitions, ingest_job, lifecycle_job
from unified_assets.partitions import BATCHES
from unified_assets.settings import Settings


@dataclass
class LifecycleSummary:
    batches_ingested: list[str] = field(default_factory=list)
    batches_rejected: dict[str, list[str]] = field(default_factory=dict)
    candidates: dict[str, dict[str, Any]] = field(default_factory=dict)
    challenger: dict[str, Any] = field(default_factory=dict)
    approval: dict[str, Any] = field(default_factory=dict)
    production: dict[str, Any] = field(default_factory=dict)

    def lines(self) -> list[str]:
        out = [
            f"batches ingested: {len(self.batches_ingested)}"
            + (f", rejected: {sorted(self.batches_rejected)}" if self.batches_rejected else ""),
            f"models trained: {len(self.candidates)}",
        ]
        for family, report in sorted(self.candidates.items()):
            overall = report["overall"]
            out.append(
                f"  {family:8s} v{report['version']}: roc_auc={overall['roc_auc']:.4f} "
                f"pr_auc={overall['pr_auc']:.4f} f1={overall['f1']:.4f} "
                f"brier={overall['brier']:.4f}"
            )
        prod = self.production
        if prod:
            out.append(f"champion: {prod['model_name']} v{prod['champion']} ({prod['message']})")
        elif self.approval and self.approval["approval_state"] != "approved":
            out.append(f"promotion waits: v{self.approval['version']} {self.approval['approval']}")
        else:
            out.append(f"promotion held back: {self.challenger.get('reason')}")
        return out


def ingest_landed(defs: dg.Definitions, instance: dg.DagsterInstance) -> LifecycleSummary:
    """Register every complete landed file as a partition and ingest the new ones."""
    # Resolved as a run would (EnvVars, nested resources such as S3 for an S3 landing zone).
    with dg.build_resources({"dataset": defs.resources["dataset"]}) as resources:
        files = resources.dataset.batch_files()
    known = set(instance.get_dynamic_partitions(BATCHES.name))
    instance.add_dynamic_partitions(BATCHES.name, [k for k in files if k not in known])
    # New files and files re-landed with other content (a new version) are ingested.
    new = [k for k, f in files.items() if (latest_metadata(instance, landed_batch.key, k) or {})
           .get("source_version") != f.version]
    job = defs.resolve_job_def(ingest_job.name)
    summary = LifecycleSummary()
    for key in new:
        # A failed blocking check fails the ingestion run by design; anything else is an error.
        result = job.execute_in_process(instance=instance, partition_key=key, raise_on_error=False,
                                        tags={VERSION_TAG: files[key].version, FILE_TAG: files[key].uri})
        failed = [e.check_name for e in result.get_asset_check_evaluations() if not e.passed]
        if not result.success and not failed:
            failure = next(e for e in result.all_events if e.is_failure)
            raise RuntimeError(f"ingestion of batch {key} failed: {failure.message}")
        if failed:
            summary.batches_rejected[key] = failed
        else:
            summary.batches_ingested.append(key)
    return summary


def train_evaluate_promote(
    defs: dg.Definitions, instance: dg.DagsterInstance, run_config: dict | None = None
) -> dg.ExecuteInProcessResult:
    job = defs.resolve_job_def(lifecycle_job.name)
    # A failed blocking gate fails the run by design (promotion held back); callers read
    # the outcome from the challenger's output and checks.
    return job.execute_in_process(instance=instance, run_config=run_config or {},
                                  raise_on_error=False)


def run_lifecycle(
    settings: Settings, instance: dg.DagsterInstance, run_config: dict | None = None
) -> LifecycleSummary:
    defs = build_definitions(settings)
    summary = ingest_landed(defs, instance)
    result = train_evaluate_promote(defs, instance, run_config)
    for family in ("sklearn", "torch"):
        summary.candidates[family] = result.output_for_node(f"evaluation_{family}")
    summary.challenger = result.output_for_node("challenger")
    if summary.challenger["version"]:
        summary.approval = result.output_for_node("approval")
    if summary.approval.get("approval_state") == "approved":
        summary.production = result.output_for_node("production_model")
    return summary
