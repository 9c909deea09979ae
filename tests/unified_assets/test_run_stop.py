"""Which canceled runs the run command resumes, and that it resumes each once
(unified_assets/run_stop.py; the whole Ctrl-C -> restart path runs scripts/dev.sh in
tests/deploy/test_dev_stop.py). A run a person canceled is a person's decision: never resumed."""

from __future__ import annotations

import dagster as dg

from unified_assets.run_stop import RESUME_MUTATION, resume_runs, stopped_runs
from unified_assets.run_tags import RESUMED_TAG, STOPPED_TAG


@dg.op
def noop() -> None:
    return None


@dg.job
def some_job() -> None:
    noop()


def _canceled(instance: dg.DagsterInstance, **tags: str) -> dg.DagsterRun:
    run = instance.create_run_for_job(some_job, tags=tags)
    instance.report_run_canceled(run)
    return instance.get_run_by_id(run.run_id)


def test_only_runs_the_run_command_stopped_and_not_yet_resumed_are_resumed_once():
    with dg.instance_for_test() as instance:
        person = _canceled(instance)
        stopped = _canceled(instance, **{STOPPED_TAG: "scripts/dev.sh (Ctrl-C at T)"})
        done = _canceled(instance, **{STOPPED_TAG: "scripts/dev.sh (Ctrl-C at T)"})
        instance.create_run_for_job(some_job, tags={"dagster/parent_run_id": done.run_id})
        # A resumption carries its parent's tags; its own stop tag is blank until it is stopped.
        resumption = _canceled(instance, **{STOPPED_TAG: "", RESUMED_TAG: ""})
        assert [r.run_id for r in stopped_runs(instance)] == [stopped.run_id]
        assert person.run_id and resumption.run_id

        posted: list[dict] = []

        def webserver(query: str, variables: dict) -> dict:
            # What the webserver answers to Dagster's re-execution mutation.
            assert query == RESUME_MUTATION
            posted.append(variables["params"])
            return {"launchRunReexecution": {"__typename": "LaunchRunSuccess",
                                             "run": {"runId": "resumed-run-id"}}}

        (outcome,) = resume_runs(instance, webserver)
        assert outcome.status == "resumed" and "resumed-run-id" in outcome.note
        (params,) = posted
        assert params["parentRunId"] == stopped.run_id
        assert params["strategy"] == "FROM_FAILURE" and params["useParentRunTags"] is True
        extra = {tag["key"]: tag["value"] for tag in params["extraTags"]}
        assert extra["unified-ai/trigger"] == "resume" and extra[STOPPED_TAG] == ""
        assert stopped.run_id[:8] in extra["unified-ai/reason"]
        assert "Ctrl-C" in extra["unified-ai/reason"]
        assert instance.get_run_by_id(stopped.run_id).tags[RESUMED_TAG] == "resumed-run-id"
        assert resume_runs(instance, webserver) == [] and len(posted) == 1


def test_a_stopped_run_with_nothing_left_to_run_is_marked_and_not_tried_again():
    with dg.instance_for_test() as instance:
        stopped = _canceled(instance, **{STOPPED_TAG: "scripts/dev.sh (SIGTERM at T)"})

        def webserver(query: str, variables: dict) -> dict:
            return {"launchRunReexecution": {
                "__typename": "InvalidSubsetError",
                "message": "No steps needed to be retried in the failed run."}}

        (outcome,) = resume_runs(instance, webserver)
        assert outcome.status == "not resumed" and "No steps needed" in outcome.note
        assert instance.get_run_by_id(stopped.run_id).tags[RESUMED_TAG].startswith("not resumed")
        assert stopped_runs(instance) == []
