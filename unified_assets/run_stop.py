"""Stopping the run command is a stop, not a failure (issue 12: every red thing in the UI is
a real failure). Ctrl-C used to interrupt every run process at once: each run in progress
ended FAILED, the next start filed an escalated `run_failure` incident for it, and its work
was lost (a bootstrap's run key is never requested twice; a drift retrain had consumed its
evidence).

`stop_runs` tags each run in progress with why and cancels it through the instance's run
coordinator, as the UI's Terminate does (a queued run at once; a started one is interrupted
and ends CANCELED, not FAILED). Then, while the webserver still runs, `queue_resumptions`
re-executes each from where it stopped: Dagster's own re-execution (FROM_FAILURE) through the
webserver's GraphQL API, as the UI's "Re-execute from failure" does (creating a re-execution
needs the code location's job, which only a workspace holds). The resumption keeps the job,
config and tags, joins the same run group and keeps the finished steps; it waits in the run
queue behind a hold (a tag whose queue limit is 0, deploy/local/dagster.yaml) until the run
command starts again and `release_resumptions` lifts it. Queued from the stop on, it counts as
in progress: declarative automation does not act on the stopped run's partial outputs at the
next start (a new user saw it re-run the promotion steps against the old model, leaving stale
approval requests) and the sensors wait for it. A run a person canceled carries no stop tag
and stays canceled. Where no hold is configured (an instance folder made before it) or the
webserver did not answer, the next start re-executes the stopped runs instead."""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import dagster as dg
from dagster._core.storage.tags import TAGS_TO_MAYBE_OMIT_ON_RETRY

from unified_assets.run_tags import (
    HELD,
    HOLD_TAG,
    MAX_REASON,
    REASON_TAG,
    RESUMED_TAG,
    STOPPED_TAG,
    TRIGGER_TAG,
)

PARENT_RUN_TAG = "dagster/parent_run_id"
IN_PROGRESS = [dg.DagsterRunStatus.QUEUED, dg.DagsterRunStatus.NOT_STARTED,
               dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.STARTED,
               dg.DagsterRunStatus.CANCELING]
# Dagster's tags about one attempt (its failure, metrics, retries, backfill), which Dagster
# leaves out of a re-execution's copy of its parent's tags; so does this copy.
ATTEMPT_TAGS = frozenset(TAGS_TO_MAYBE_OMIT_ON_RETRY)

RESUME_MUTATION = """
mutation Resume($params: ReexecutionParams!) {
  launchRunReexecution(reexecutionParams: $params) {
    __typename
    ... on LaunchRunSuccess { run { runId } }
    ... on Error { message }
  }
}"""

Post = Callable[[str, dict], dict]


@dataclass(frozen=True)
class Outcome:
    run_id: str
    job_name: str
    status: str  # the run's status when we stopped looking, or what resuming it gave
    note: str = ""

    def line(self) -> str:
        return f"{self.run_id[:8]} {self.job_name}: {self.status}" + (
            f" ({self.note})" if self.note else "")


def stop_runs(instance: dg.DagsterInstance, reason: str, timeout: float = 60.0,
              poll: float = 0.5) -> list[Outcome]:
    """Cancel every run in progress, tagged with `reason`, and wait (up to `timeout`) until
    each has ended; runs a sensor launches meanwhile are stopped too. Held resumptions of an
    earlier stop are left queued. Returns each run's end."""
    stopped: dict[str, dg.DagsterRun] = {}
    deadline = time.monotonic() + timeout
    while True:
        new = [run for run in instance.get_runs(dg.RunsFilter(statuses=IN_PROGRESS))
               if run.run_id not in stopped and run.tags.get(HOLD_TAG) != HELD]
        for run in new:
            instance.add_run_tags(run.run_id, {STOPPED_TAG: reason[:MAX_REASON]})
            if run.status != dg.DagsterRunStatus.CANCELING:
                instance.run_coordinator.cancel_run(run.run_id)
            stopped[run.run_id] = run
        current = {run_id: instance.get_run_by_id(run_id) for run_id in stopped}
        unfinished = [run for run in current.values() if run and not run.is_finished]
        if (not new and not unfinished) or time.monotonic() > deadline:
            return [Outcome(run_id, stopped[run_id].job_name,
                            run.status.value if run else "deleted")
                    for run_id, run in current.items()]
        time.sleep(poll)


def hold_configured(instance: dg.DagsterInstance) -> bool:
    """Whether the run queue keeps held runs queued (a limit of 0 on the hold tag)."""
    limits = instance.get_concurrency_config().run_queue_config.tag_concurrency_limits or []
    return any(limit.get("key") == HOLD_TAG and limit.get("value") == HELD
               and limit.get("limit") == 0 for limit in limits)


def stopped_runs(instance: dg.DagsterInstance) -> list[dg.DagsterRun]:
    """Runs the run command stopped that have no resumption yet, oldest first."""
    runs = instance.get_runs(dg.RunsFilter(statuses=[dg.DagsterRunStatus.CANCELED]))
    return [run for run in reversed(list(runs))
            if run.tags.get(STOPPED_TAG) and not run.tags.get(RESUMED_TAG)
            and not instance.get_runs(dg.RunsFilter(tags={PARENT_RUN_TAG: run.run_id}), limit=1)]


def graphql(url: str) -> Post:
    """A poster of GraphQL requests to the webserver at `url` (loopback: never via a proxy)."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def post(query: str, variables: dict) -> dict:
        body = json.dumps({"query": query, "variables": variables}).encode()
        request = urllib.request.Request(f"{url.rstrip('/')}/graphql", data=body,
                                         headers={"Content-Type": "application/json"})
        with opener.open(request, timeout=60) as response:
            answer = json.load(response)
        if answer.get("errors"):
            raise RuntimeError(f"GraphQL at {url}: {answer['errors'][0].get('message')}")
        return answer["data"]

    return post


def _tags(run: dg.DagsterRun, held: bool) -> dict[str, str]:
    """The resumption's tags: its parent's (the parent's stop, not the attempt's own tags),
    why it runs, and the hold."""
    was = run.tags.get(TRIGGER_TAG, "a person")
    why = run.tags.get(REASON_TAG)
    reason = (f"resumes run {run.run_id[:8]}, stopped by {run.tags[STOPPED_TAG]}; it had "
              f"started on {was}" + (f": {why}" if why else ""))
    kept = {key: value for key, value in run.tags.items()
            if key not in (STOPPED_TAG, RESUMED_TAG, HOLD_TAG) and key not in ATTEMPT_TAGS}
    return {**kept, TRIGGER_TAG: "resume", REASON_TAG: reason[:MAX_REASON],
            **({HOLD_TAG: HELD} if held else {})}


def queue_resumptions(instance: dg.DagsterInstance, post: Post, held: bool) -> list[Outcome]:
    """Re-execute each stopped run from where it stopped, once (the stopped run is tagged with
    its resumption, or with why there is none); `held`: it waits behind the hold."""
    outcomes = []
    for run in stopped_runs(instance):
        params = {"parentRunId": run.run_id, "strategy": "FROM_FAILURE", "useParentRunTags": False,
                  "extraTags": [{"key": k, "value": v} for k, v in _tags(run, held).items()]}
        result = post(RESUME_MUTATION, {"params": params})["launchRunReexecution"]
        if result["__typename"] == "LaunchRunSuccess":
            new_id = result["run"]["runId"]
            instance.add_run_tags(run.run_id, {RESUMED_TAG: new_id})
            outcomes.append(Outcome(run.run_id, run.job_name, "resumption queued" if held
                                    else "resumed", f"as run {new_id[:8]}"))
            continue
        message = result.get("message", result["__typename"]).strip().splitlines()[0]
        if result["__typename"] == "InvalidSubsetError":  # every step had finished: none to run
            instance.add_run_tags(run.run_id, {RESUMED_TAG: f"not resumed: {message}"[:MAX_REASON]})
        outcomes.append(Outcome(run.run_id, run.job_name, "not resumed", message))
    return outcomes


def held_runs(instance: dg.DagsterInstance) -> list[dg.DagsterRun]:
    """Resumptions waiting behind the hold."""
    return list(instance.get_runs(dg.RunsFilter(statuses=[dg.DagsterRunStatus.QUEUED],
                                                tags={HOLD_TAG: HELD})))


def release_resumptions(instance: dg.DagsterInstance) -> list[Outcome]:
    """Lift the hold: the run queue starts the resumptions as it starts any queued run."""
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    outcomes = []
    for run in held_runs(instance):
        instance.add_run_tags(run.run_id, {HOLD_TAG: f"released at {now}"})
        parent = run.tags.get(PARENT_RUN_TAG, "")
        outcomes.append(Outcome(run.run_id, run.job_name, "released",
                                f"resumes run {parent[:8]}" if parent else ""))
    return outcomes
