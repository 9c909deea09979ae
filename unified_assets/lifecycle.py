"""Run the lifecycle headless through Dagster: ingest every landed batch, then train,
evaluate and promote. Used by `unified-ai demo`, the tests and the benchmarks."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import dagster as dg

from sensors.landing import FILE_TAG, VERSION_TAG, contiguous_chunks, latest_metadata
from unified_assets.assets.data import PARTITIONS_PER_RUN, batch_findings, landed_batch
from unified_assets.assets.selection import SELECTED
from unified_assets.candidates import candidate_names
from unified_assets.definitions import build_definitions, ingest_job, lifecycle_job
from unified_assets.partitions import BATCHES
from unified_assets.settings import Settings
from unified_assets.values import ApprovalRecord, ChallengerChoice, EvaluationReport

RANGE_START_TAG = "dagster/asset_partition_range_start"
RANGE_END_TAG = "dagster/asset_partition_range_end"


@dataclass
class LifecycleSummary:
    """What a lifecycle run did, for people: a hold (no candidate qualified, an approval
    waiting) reads as an outcome with its reason, never as a failed step."""

    batches_ingested: list[str] = field(default_factory=list)
    batches_rejected: dict[str, list[str]] = field(default_factory=dict)  # batch -> failed checks
    batch_findings: dict[str, list[str]] = field(default_factory=dict)  # batch -> what is wrong
    candidates: dict[str, EvaluationReport] = field(default_factory=dict)  # evaluated or failed
    failed: dict[str, str] = field(default_factory=dict)  # candidate family -> why it failed
    steps_failed: dict[str, str] = field(default_factory=dict)  # step -> error, not run: why
    steps_skipped: dict[str, str] = field(default_factory=dict)  # step -> why (a hold upstream)
    held: str = ""  # why no candidate was selected ("" when one was, or none was judged)
    run_id: str = ""
    challenger: ChallengerChoice | None = None
    approval: ApprovalRecord | None = None
    production: dict[str, Any] = field(default_factory=dict)

    def lines(self) -> list[str]:
        out = [f"batches ingested: {len(self.batches_ingested)}"
               + (f", rejected: {sorted(self.batches_rejected)}" if self.batches_rejected else "")]
        for batch, checks in sorted(self.batches_rejected.items()):
            out.append(f"  rejected {batch} (failed checks: {', '.join(checks)})")
            out.extend(f"    - {finding}" for finding in self.batch_findings.get(batch, []))
        evaluated = {f: r for f, r in self.candidates.items() if not r.error}
        out.append(f"models trained: {len(evaluated)}"
                   + (f", failed: {sorted(self.failed)}" if self.failed else ""))
        for family, report in sorted(evaluated.items()):
            overall = report.overall
            out.append(f"  {family:8s} v{report.version}: " + " ".join(
                f"{k}={_fmt(overall.get(k))}" for k in SUMMARY_METRICS))
        for family, why in sorted(self.failed.items()):
            out.append(f"  {family:8s} FAILED: {why}")
        for step, why in sorted(self.steps_failed.items()):
            if not any(step.endswith(f"_{family}") for family in self.failed):
                out.append(f"  step {step} FAILED: {why}")
        prod = self.production
        if prod:
            out.append(f"champion: {prod['model_name']} v{prod['champion']} ({prod['message']})")
        elif self.approval is not None and not self.approval.approved:
            out.append(f"promotion waits: v{self.approval.version} {self.approval.approval}")
        elif self.held:
            out.append(f"promotion held: {self.held}")
        elif self.challenger:
            out.append(f"promotion held back: {self.challenger.reason}")
        else:
            out.append("promotion held back: no challenger was selected (see the failures above)")
        return out


SUMMARY_METRICS = ("roc_auc", "pr_auc", "f1", "brier", "brier_skill")


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def rejected_findings(instance: dg.DagsterInstance, batches: list[str]) -> dict[str, list[str]]:
    """What is wrong with each rejected batch, one 'check: problem' line each, from its
    latest `landed_batch` materialization."""
    return {batch: batch_findings(instance, batch, with_check=True) for batch in batches}


def _root_cause(error) -> str:
    """The first line of the innermost error (Dagster wraps the user's exception)."""
    if error is None:
        return "failed"
    while error.cause is not None:
        error = error.cause
    return (error.message.strip().splitlines() or ["failed"])[0]


def _step_outcomes(
    result: dg.ExecuteInProcessResult,
) -> tuple[set[str], dict[str, str], dict[str, str]]:
    """The steps that succeeded; for each failed step why (a step abandoned after an upstream
    failure included); and the steps skipped because an upstream held its output back."""
    succeeded, why, skipped = set(), {}, {}
    for event in result.all_events:
        if event.step_key is None:
            continue
        if event.is_step_success:
            succeeded.add(event.step_key)
        elif event.is_step_failure:
            why[event.step_key] = _root_cause(event.event_specific_data.error)
        elif event.is_step_skipped:
            skipped[event.step_key] = "not run: held upstream (no output to act on)"
    for event in result.all_events:  # abandoned steps only log an engine error
        if event.step_key and event.step_key not in succeeded | set(why) | set(skipped) \
                and event.message and "Dependencies for step" in event.message:
            why[event.step_key] = f"not run: {event.message}"
    return succeeded, why, skipped


def ingest_landed(defs: dg.Definitions, instance: dg.DagsterInstance) -> LifecycleSummary:
    """Register every complete landed file as a partition and ingest the new ones."""
    # Resolved as a run would (EnvVars, nested resources such as S3 for an S3 landing zone),
    # on this instance: without one Dagster makes an in-memory instance for it (0.05-0.08 s).
    with dg.build_resources({"dataset": defs.resources["dataset"]},
                            instance=instance) as resources:
        files = resources.dataset.batch_files()
    known = set(instance.get_dynamic_partitions(BATCHES.name))
    instance.add_dynamic_partitions(BATCHES.name, [k for k in files if k not in known])
    # New files and files re-landed with other content (a new version) are ingested.
    new = [k for k, f in files.items() if (latest_metadata(instance, landed_batch.key, k) or {})
           .get("source_version") != f.version]
    job = defs.resolve_job_def(ingest_job.name)
    summary = LifecycleSummary()
    # As the landing sensor does: neighbouring new batches in one run over their partition
    # range (per-batch materializations and checks); a lone batch gets its own run.
    order = instance.get_dynamic_partitions(BATCHES.name)
    for chunk in contiguous_chunks(order, set(new), PARTITIONS_PER_RUN):
        if len(chunk) == 1:
            tags = {VERSION_TAG: files[chunk[0]].version, FILE_TAG: files[chunk[0]].uri}
        else:
            tags = {RANGE_START_TAG: chunk[0], RANGE_END_TAG: chunk[-1]}
        result = job.execute_in_process(instance=instance, raise_on_error=False, tags=tags,
                                        partition_key=chunk[0] if len(chunk) == 1 else None)
        if not result.success:  # a rejected batch is a green run: a failure is an error
            failure = next(e for e in result.all_events if e.is_failure)
            raise RuntimeError(f"ingestion of {chunk[0]}..{chunk[-1]} failed: {failure.message}")
        failed: dict[str, list[str]] = {}
        for evaluation in result.get_asset_check_evaluations():
            if not evaluation.passed:
                failed.setdefault(evaluation.partition, []).append(evaluation.check_name)
        for key in chunk:
            if key in failed:
                summary.batches_rejected[key] = failed[key]
            else:
                summary.batches_ingested.append(key)
    return summary


def train_evaluate_promote(
    defs: dg.Definitions, instance: dg.DagsterInstance, run_config: dict | None = None
) -> dg.ExecuteInProcessResult:
    job = defs.resolve_job_def(lifecycle_job.name)
    # A gate hold is a successful run without a challenger output (approval and promotion
    # skipped); `summarize` reads the outcome, the hold's reason included.
    # The run names the assets it plans (as a launch from the UI does): automation then knows
    # the challenger already ran after these evaluations, even when a hold left it unmaterialized.
    return job.execute_in_process(instance=instance, run_config=run_config or {},
                                  raise_on_error=False, asset_selection=planned_assets(job))


def write_quality_reports(defs: dg.Definitions, instance: dg.DagsterInstance
                          ) -> dg.ExecuteInProcessResult:
    """Evidently's quality report of every declared candidate's latest evaluation, as the
    report automation builds them after a lifecycle run (for runs without a daemon)."""
    graph = defs.resolve_asset_graph()
    keys = [dg.AssetKey(f"quality_report_{name}") for name in candidate_names(graph)]
    return defs.resolve_implicit_global_asset_job_def().execute_in_process(
        instance=instance, asset_selection=keys, raise_on_error=False)


def planned_assets(job: dg.JobDefinition) -> list[dg.AssetKey]:
    """Every asset `job` materializes: a run launched without an asset selection records
    none, and automation then re-requests a held challenger after the run's evaluations."""
    return sorted(job.asset_layer.selected_asset_keys)


def run_lifecycle(
    settings: Settings, instance: dg.DagsterInstance, run_config: dict | None = None
) -> LifecycleSummary:
    """Ingest, then train, evaluate and promote; the summary says who failed and why, and
    why promotion is held. A failed candidate never hides the others."""
    defs = build_definitions(settings)
    summary = ingest_landed(defs, instance)
    summary.batch_findings = rejected_findings(instance, sorted(summary.batches_rejected))
    return summarize(train_evaluate_promote(defs, instance, run_config), summary)


def summarize(result: dg.ExecuteInProcessResult,
              summary: LifecycleSummary | None = None) -> LifecycleSummary:
    """The outcome of one train-evaluate-promote run. Only outputs that were yielded are read;
    a hold is read from the challenger's `challenger_selected` check, not from a failure."""
    summary = summary or LifecycleSummary()
    summary.run_id = result.run_id
    _, why, skipped = _step_outcomes(result)
    summary.steps_failed, summary.steps_skipped = why, skipped

    def output(step: str) -> Any:
        # A held step yields no output; a failed candidate's steps may not have run.
        try:
            return result.output_for_node(step)
        except dg.DagsterInvariantViolationError:
            return None

    for family in candidate_names(result.job_def.asset_layer.asset_graph):
        report = output(f"evaluation_{family}")
        if report is not None:
            summary.candidates[family] = report
            if report.error:
                summary.failed[family] = report.error
        else:
            step = next((s for s in (f"model_{family}", f"evaluation_{family}") if s in why),
                        f"evaluation_{family}")
            summary.failed[family] = f"{step}: {why.get(step, 'did not run')}"
    summary.challenger = output("challenger")
    selected = next((e for e in result.get_asset_check_evaluations()
                     if e.check_name == SELECTED and e.asset_key == dg.AssetKey("challenger")),
                    None)
    if selected is not None and not selected.passed:
        summary.held = selected.metadata["reason"].value
    if summary.challenger is not None:
        summary.approval = output("approval")
    if summary.approval is not None and summary.approval.approved:
        summary.production = output("production_model") or {}
    return summary
