"""Launching a job as a run of the user's Dagster instance, never in this process.

The CLI acts on production (a rollback) the way the UI does: a run is created in the
instance and submitted to its run coordinator, so it goes through the queue and the run
launcher (on Kubernetes, a pod in the cluster, not the laptop that typed the command), and
shows in the UI like any other. With a webserver URL configured (`UNIFIED_AI_DAGSTER_URL`)
the run is submitted through its GraphQL API instead. Either way the caller waits for the
outcome; a run the queue never picks up (no daemon) is reported, not waited on forever.

This mirrors `dagster job launch` (dagster/_cli/job.py): a workspace loads the code location
from its python module in a code server, and the run is created from that location's job
snapshot and execution plan, under the location name `workspace.yaml` gives it, so the
daemon and the webserver find its code location.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import dagster as dg

DEFINITIONS_MODULE = "unified_assets.definitions"
LOCATION_NAME = "unified_ai"  # as workspace.yaml names the code location
QUEUE_DAEMON = "QUEUED_RUN_COORDINATOR"
START_DAEMON = "start it with `bash scripts/dev.sh` (or `dagster-daemon run`) on this DAGSTER_HOME"
POLL_SECONDS = 0.5


@dataclass(frozen=True)
class RunOutcome:
    """How a launched run ended. `status` is Dagster's run status name, or QUEUED when it
    waits for a daemon that is not running; `reason` is the one line of a refusal or error."""

    run_id: str
    status: str
    reason: str | None = None
    refused: bool = False
    message: str | None = None  # what production_model says it did (its metadata)
    incident: str | None = None

    @property
    def success(self) -> bool:
        return self.status == "SUCCESS"


class LaunchError(RuntimeError):
    """The run could not be submitted (no code location, bad config, webserver unreachable)."""


def launch_job(job_name: str, run_config: dict, tags: dict[str, str],
               timeout_seconds: float = 600.0, webserver_url: str | None = None) -> RunOutcome:
    """Submit a run of `job_name` (through the webserver at `webserver_url` when given, else
    to the DAGSTER_HOME instance) and wait until it ends, fails to be picked up, or
    `timeout_seconds` pass."""
    url = (webserver_url or "").strip()
    if url:
        return launch_via_webserver(url, job_name, run_config, tags, timeout_seconds)
    import dagster as dg

    with dg.DagsterInstance.get() as instance:
        return launch_on_instance(instance, job_name, run_config, tags, timeout_seconds)


def launch_on_instance(instance: dg.DagsterInstance, job_name: str, run_config: dict,
                       tags: dict[str, str], timeout_seconds: float = 600.0) -> RunOutcome:
    """Create the run in `instance`, submit it to the run coordinator, wait for the outcome.
    The code server stays up while waiting: a run launched directly (no queue) runs in it."""
    from dagster._core.workspace.context import WorkspaceProcessContext
    from dagster._core.workspace.load_target import ModuleTarget
    from dagster.version import __version__

    target = ModuleTarget(module_name=DEFINITIONS_MODULE, attribute=None,
                          working_directory=None, location_name=LOCATION_NAME)
    # The code server's own INFO lines (starting, stopping) would bury the one-line outcome.
    with WorkspaceProcessContext(instance, target, version=__version__,
                                 code_server_log_level="WARNING") as process:
        workspace = process.create_request_context()
        location = workspace.get_code_location_error(LOCATION_NAME)
        if location is not None:
            raise LaunchError(f"the code location does not load: {location.message.strip()}")
        run = _create_run(instance, workspace.get_code_location(LOCATION_NAME), job_name,
                          run_config, tags)
        instance.submit_run(run.run_id, workspace)
        return wait_for_run(instance, run.run_id, timeout_seconds)


def _create_run(instance: dg.DagsterInstance, location, job_name: str, run_config: dict,
                tags: dict[str, str]) -> dg.DagsterRun:
    """The run as `dagster job launch` creates it: the job's snapshot and execution plan from
    the code location, its origin naming that location."""
    from dagster._core.definitions.selector import JobSubsetSelector
    from dagster._utils.tags import normalize_tags

    (repository,) = location.get_repositories().values()
    selector = JobSubsetSelector(location_name=location.name, repository_name=repository.name,
                                 job_name=job_name, op_selection=None)
    remote_job = location.get_job(selector)
    plan = location.get_execution_plan(remote_job, run_config, step_keys_to_execute=None,
                                       known_state=None, instance=instance)
    snapshot = plan.execution_plan_snapshot
    return instance.create_run(
        job_name=job_name, run_id=None, run_config=run_config,
        resolved_op_selection=remote_job.resolved_op_selection,
        step_keys_to_execute=snapshot.step_keys_to_execute, op_selection=None, status=None,
        root_run_id=None, parent_run_id=None,
        tags=normalize_tags({**remote_job.tags, **tags}),
        job_snapshot=remote_job.job_snapshot, execution_plan_snapshot=snapshot,
        parent_job_snapshot=remote_job.parent_job_snapshot,
        remote_job_origin=remote_job.get_remote_origin(),
        job_code_origin=remote_job.get_python_origin(),
        asset_selection=None, asset_check_selection=None, asset_graph=repository.asset_graph)


def queue_daemon_running(instance: dg.DagsterInstance) -> bool:
    """Whether the daemon that dequeues runs is heartbeating (or not needed at all)."""
    status = instance.get_daemon_statuses([QUEUE_DAEMON])[QUEUE_DAEMON]
    return not status.required or bool(status.healthy)


def wait_for_run(instance: dg.DagsterInstance, run_id: str,
                 timeout_seconds: float = 600.0) -> RunOutcome:
    """Poll the run until it ends. A run still queued with no daemon to dequeue it returns at
    once as QUEUED; one not ended after `timeout_seconds` returns with its current status."""
    import dagster as dg

    deadline = time.monotonic() + timeout_seconds
    while True:
        run = instance.get_run_by_id(run_id)
        if run is None:
            raise LaunchError(f"run {run_id} vanished from the instance")
        if run.status == dg.DagsterRunStatus.QUEUED and not queue_daemon_running(instance):
            return RunOutcome(run_id, "QUEUED",
                              reason=f"run {run_id} is queued but no Dagster daemon is running "
                              f"to start it; {START_DAEMON}")
        if run.is_finished:
            return _finished(instance, run)
        if time.monotonic() > deadline:
            return RunOutcome(run_id, run.status.value, reason=f"run {run_id} is still "
                              f"{run.status.value.lower()} after {timeout_seconds:.0f}s; "
                              "follow it in the Dagster UI")
        time.sleep(POLL_SECONDS)


def _finished(instance: dg.DagsterInstance, run: dg.DagsterRun) -> RunOutcome:
    """The outcome of an ended run from its events: a refusal's one line, else the first
    error; on success what production_model recorded."""
    import dagster as dg

    from unified_assets.services.refusals import one_line, refusal, step_error

    if run.status == dg.DagsterRunStatus.SUCCESS:
        message = incident = None
        for record in instance.get_records_for_run(
                run.run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION).records:
            metadata = record.event_log_entry.asset_materialization.metadata
            if "message" in metadata:
                message = metadata["message"].value
                incident = metadata["incident"].value if "incident" in metadata else None
        return RunOutcome(run.run_id, "SUCCESS", message=message, incident=incident)
    failures = [r.event_log_entry.dagster_event for r in instance.get_records_for_run(
        run.run_id, of_type=dg.DagsterEventType.STEP_FAILURE).records]
    refusals = [refusal(event) for event in failures]
    if failures and all(refusals):
        return RunOutcome(run.run_id, run.status.value, reason="; ".join(refusals), refused=True)
    errors = [step_error(event) for event in failures]
    if not any(errors):
        runs = instance.get_records_for_run(run.run_id,
                                            of_type=dg.DagsterEventType.RUN_FAILURE).records
        errors = [r.event_log_entry.dagster_event.message for r in runs] or [run.status.value]
    return RunOutcome(run.run_id, run.status.value,
                      reason=one_line(next(e for e in errors if e)))


RUN_FAILURE_QUERY = """
query RunFailure($runId: ID!) {
  logsForRun(runId: $runId) {
    __typename
    ... on EventConnection { events { __typename
      ... on ExecutionStepFailureEvent { message error { message }
        failureMetadata { description metadataEntries { label
          ... on BoolMetadataEntry { boolValue } } } } } }
  }
}"""


def launch_via_webserver(url: str, job_name: str, run_config: dict, tags: dict[str, str],
                         timeout_seconds: float = 600.0) -> RunOutcome:
    """Submit through the webserver's GraphQL API and poll its run status until it ends."""
    from urllib.parse import urlparse

    from dagster_graphql import DagsterGraphQLClient, DagsterGraphQLClientError

    from unified_assets.services.refusals import REFUSED_MARKER, one_line

    parsed = urlparse(url if "://" in url else f"http://{url}")
    client = DagsterGraphQLClient(parsed.hostname or "localhost", port_number=parsed.port,
                                  use_https=parsed.scheme == "https",
                                  path_prefix=parsed.path.rstrip("/"))
    try:
        run_id = client.submit_job_execution(job_name, repository_location_name=LOCATION_NAME,
                                             run_config=run_config, tags=tags)
    except DagsterGraphQLClientError as error:
        raise LaunchError(f"the webserver at {url} did not take the run: {error}") from None
    deadline = time.monotonic() + timeout_seconds
    while True:
        status = client.get_run_status(run_id).value
        if status in ("SUCCESS", "FAILURE", "CANCELED"):
            break
        if time.monotonic() > deadline:
            return RunOutcome(run_id, status, reason=f"run {run_id} is still {status.lower()} "
                              f"after {timeout_seconds:.0f}s; follow it at {url}")
        time.sleep(POLL_SECONDS)
    if status == "SUCCESS":
        return RunOutcome(run_id, status)
    try:
        data = client._execute(RUN_FAILURE_QUERY, {"runId": run_id})  # noqa: SLF001
        events = (data.get("logsForRun") or {}).get("events") or []
    except Exception:  # noqa: BLE001 - the status stands; the reason is in the UI
        events = []
    for event in events:
        if event.get("__typename") != "ExecutionStepFailureEvent":
            continue
        meta = event.get("failureMetadata") or {}
        if any(e.get("label") == REFUSED_MARKER and e.get("boolValue")
               for e in meta.get("metadataEntries") or []):
            return RunOutcome(run_id, status, reason=meta.get("description") or "refused",
                              refused=True)
        message = meta.get("description") or (event.get("error") or {}).get("message")
        return RunOutcome(run_id, status, reason=one_line(message or status))
    return RunOutcome(run_id, status, reason=f"run {run_id} ended {status}; see it at {url}")
