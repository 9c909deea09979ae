"""Stopping the run command is a stop, not a failure (issue 12: every red thing in the UI is
a real failure). Ctrl-C used to interrupt every run process at once: each run in progress
ended FAILED, the next start filed an escalated `run_failure` incident for it, and its work
was lost (a bootstrap's run key is never requested twice; a drift retrain had consumed its
evidence).

`stop_runs` tags each run in progress with why and cancels it through the instance's run
coordinator, as the UI's Terminate does (a queued run at once; a started one is interrupted
and ends CANCELED, not FAILED). `resume_runs`, at the next start, re-executes each run
stopped that way from where it stopped: Dagster's own re-execution (FROM_FAILURE) through the
webserver's GraphQL API, as the UI's "Re-execute from failure" does, because creating a
re-execution needs the code location's job, which only a workspace (the webserver) holds. The
resumed run keeps the job, config and tags and joins the same run group; its finished steps
are kept. A run a person canceled carries no stop tag and stays canceled."""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass

import dagster as dg

from unified_assets.run_tags import MAX_REASON, REASON_TAG, RESUMED_TAG, STOPPED_TAG, TRIGGER_TAG

PARENT_RUN_TAG = "dagster/parent_run_id"
IN_PROGRESS = [dg.DagsterRunStatus.QUEUED, dg.DagsterRunStatus.NOT_STARTED,
               dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.STARTED,
               dg.DagsterRunStatus.CANCELING]

RESUME_MUTATION = """
mutation Resume($params: ReexecutionParams!) {
  launchRunReexecution(reexecutionParams: $params) {
    __typename
    ... on LaunchRunSuccess { run { runId } }
    ... on Error { message }
  }
}"""


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
    each has ended; runs a sensor launches meanwhile are stopped too. Returns each run's end."""
    stopped: dict[str, dg.DagsterRun] = {}
    deadline = time.monotonic() + timeout
    while True:
        new = [run for run in instance.get_runs(dg.RunsFilter(statuses=IN_PROGRESS))
               if run.run_id not in stopped]
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


def stopped_runs(instance: dg.DagsterInstance) -> list[dg.DagsterRun]:
    """Runs the run command stopped that were not resumed yet, oldest first."""
    runs = instance.get_runs(dg.RunsFilter(statuses=[dg.DagsterRunStatus.CANCELED]))
    return [run for run in reversed(list(runs))
            if run.tags.get(STOPPED_TAG) and not run.tags.get(RESUMED_TAG)
            and not instance.get_runs(dg.RunsFilter(tags={PARENT_RUN_TAG: run.run_id}), limit=1)]


def graphql(url: str) -> Callable[[str, dict], dict]:
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


def resume_runs(instance: dg.DagsterInstance, post: Callable[[str, dict], dict]
                ) -> list[Outcome]:
    """Re-execute each stopped run from where it stopped (once: the stopped run is tagged
    with its resumption, or with why there is none)."""
    outcomes = []
    for run in stopped_runs(instance):
        was = run.tags.get(TRIGGER_TAG, "a person")
        why = run.tags.get(REASON_TAG)
        reason = (f"resumes run {run.run_id[:8]}, stopped by {run.tags[STOPPED_TAG]}; it had "
                  f"started on {was}" + (f": {why}" if why else ""))
        params = {"parentRunId": run.run_id, "strategy": "FROM_FAILURE", "useParentRunTags": True,
                  "extraTags": [{"key": key, "value": value} for key, value in {
                      TRIGGER_TAG: "resume", REASON_TAG: reason[:MAX_REASON],
                      STOPPED_TAG: "", RESUMED_TAG: ""}.items()]}
        result = post(RESUME_MUTATION, {"params": params})["launchRunReexecution"]
        if result["__typename"] == "LaunchRunSuccess":
            new_id = result["run"]["runId"]
            instance.add_run_tags(run.run_id, {RESUMED_TAG: new_id})
            outcomes.append(Outcome(run.run_id, run.job_name, "resumed", f"as run {new_id}"))
            continue
        message = result.get("message", result["__typename"]).strip().splitlines()[0]
        if result["__typename"] == "InvalidSubsetError":  # every step had finished: none to run
            instance.add_run_tags(run.run_id, {RESUMED_TAG: f"not resumed: {message}"[:MAX_REASON]})
        outcomes.append(Outcome(run.run_id, run.job_name, "not resumed", message))
    return outcomes
