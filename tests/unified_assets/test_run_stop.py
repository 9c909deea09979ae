"""Which canceled runs the run command resumes, with which tags, and that it resumes each once
(unified_assets/run_stop.py; the whole Ctrl-C -> restart path runs scripts/dev.sh against its
webserver in tests/deploy/test_dev_stop.py). A run a person canceled is a person's decision:
never resumed."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import yaml

from unified_assets.run_stop import (
    RESUME_MUTATION,
    hold_configured,
    queue_resumptions,
    stopped_runs,
)
from unified_assets.run_tags import HELD, HOLD_TAG, RESUMED_TAG, STOPPED_TAG

LOCAL_INSTANCE = Path(__file__).resolve().parents[2] / "deploy" / "local" / "dagster.yaml"


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


def _webserver(posted: list[dict], answer: dict):
    """What the webserver answers to Dagster's re-execution mutation."""
    def post(query: str, variables: dict) -> dict:
        assert query == RESUME_MUTATION
        posted.append(variables["params"])
        return {"launchRunReexecution": answer}
    return post


def test_only_runs_the_run_command_stopped_are_resumed_once_with_their_tags_not_its_stop():
    with dg.instance_for_test() as instance:
        person = _canceled(instance)
        stopped = _canceled(instance, **{STOPPED_TAG: "scripts/dev.sh (Ctrl-C at T)",
                                         "unified-ai/trigger": "drift",
                                         "unified-ai/reason": "drift vs champion v3",
                                         "dagster/partition": "batch-00007",
                                         "dagster/failure_reason": "UNEXPECTED_TERMINATION"})
        done = _canceled(instance, **{STOPPED_TAG: "scripts/dev.sh (Ctrl-C at T)"})
        instance.create_run_for_job(some_job, tags={"dagster/parent_run_id": done.run_id})
        assert [r.run_id for r in stopped_runs(instance)] == [stopped.run_id]
        assert person.run_id not in {r.run_id for r in stopped_runs(instance)}

        posted: list[dict] = []
        webserver = _webserver(posted, {"__typename": "LaunchRunSuccess",
                                        "run": {"runId": "resumed-run-id"}})
        (outcome,) = queue_resumptions(instance, webserver, held=True)
        assert outcome.status == "resumption queued" and "resumed-" in outcome.note
        (params,) = posted
        assert params["parentRunId"] == stopped.run_id and params["strategy"] == "FROM_FAILURE"
        tags = {tag["key"]: tag["value"] for tag in params["extraTags"]}
        assert params["useParentRunTags"] is False  # its parent's tags are copied here, less:
        assert STOPPED_TAG not in tags and RESUMED_TAG not in tags  # the parent's stop
        assert "dagster/failure_reason" not in tags  # the parent attempt's own
        assert tags["dagster/partition"] == "batch-00007"  # what it runs on, kept
        assert tags[HOLD_TAG] == HELD and tags["unified-ai/trigger"] == "resume"
        assert stopped.run_id[:8] in tags["unified-ai/reason"]
        assert "Ctrl-C" in tags["unified-ai/reason"] and "drift vs champion v3" in tags[
            "unified-ai/reason"]
        assert instance.get_run_by_id(stopped.run_id).tags[RESUMED_TAG] == "resumed-run-id"
        assert queue_resumptions(instance, webserver, held=True) == [] and len(posted) == 1


def test_a_stopped_run_with_nothing_left_to_run_is_marked_and_not_tried_again():
    with dg.instance_for_test() as instance:
        stopped = _canceled(instance, **{STOPPED_TAG: "scripts/dev.sh (SIGTERM at T)"})
        webserver = _webserver([], {"__typename": "InvalidSubsetError",
                                    "message": "No steps needed to be retried in the failed run."})
        (outcome,) = queue_resumptions(instance, webserver, held=False)
        assert outcome.status == "not resumed" and "No steps needed" in outcome.note
        assert instance.get_run_by_id(stopped.run_id).tags[RESUMED_TAG].startswith("not resumed")
        assert stopped_runs(instance) == []


def test_the_local_run_queue_keeps_a_held_resumption_queued():
    # The hold is a run-queue limit of 0 on its tag, in the instance scripts/dev.sh uses; an
    # instance without it (made before) gets no held resumptions (`runs stop` checks). Its
    # release at the next start runs in tests/deploy/test_dev_stop.py.
    from dagster._utils.tags import TagConcurrencyLimitsCounter

    settings = yaml.safe_load(LOCAL_INSTANCE.read_text())
    with dg.instance_for_test(overrides={"concurrency": settings["concurrency"]}) as instance:
        assert hold_configured(instance)
        limits = instance.get_concurrency_config().run_queue_config.tag_concurrency_limits

        def blocked(tags: dict[str, str]) -> bool:  # asked by the run queue before a start
            run = instance.create_run_for_job(some_job, tags=tags)
            return TagConcurrencyLimitsCounter(limits, []).is_blocked(run)

        assert blocked({HOLD_TAG: HELD})
        assert not blocked({HOLD_TAG: "released at 2026-12-04T14:00:00Z"})
        assert not blocked({})
    with dg.instance_for_test() as instance:
        assert not hold_configured(instance)
