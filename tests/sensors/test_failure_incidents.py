import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import dagster as dg
import pytest

from unified_assets.definitions import build_definitions


@pytest.fixture
def webhook(monkeypatch):
    received: list[dict] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 - http.server API
            received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args):
            return

    server = HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv("UNIFIED_AI_ESCALATION_WEBHOOK", f"http://127.0.0.1:{server.server_port}/hook")
    yield received
    server.shutdown()


def _failed_run(defs, instance):
    """No batch has landed: building the training set fails, nothing downstream runs."""
    result = defs.resolve_job_def("train_evaluate_promote").execute_in_process(
        instance=instance, raise_on_error=False)
    assert not result.success
    return result


def _evaluate_sensor(defs, instance, result):
    run = instance.get_run_by_id(result.run_id)
    failure = next(e for e in result.all_events if e.event_type == dg.DagsterEventType.RUN_FAILURE)
    context = dg.build_run_status_sensor_context(
        sensor_name="run_failure_incidents", dagster_event=failure, dagster_instance=instance,
        dagster_run=run, resources={k: defs.resources[k] for k in ("decisions", "escalation")},
    ).for_run_failure()
    defs.resolve_sensor_def("run_failure_incidents")(context)


def test_failed_run_becomes_an_incident_and_is_escalated_to_the_webhook(settings, instance, webhook):
    defs = build_definitions(settings)
    result = _failed_run(defs, instance)
    _evaluate_sensor(defs, instance, result)
    (incident,) = defs.resources["decisions"].incidents("run_failure")
    details = incident["details"]
    assert details["run_id"] == result.run_id
    assert details["failed_steps"] == ["training_set"]
    assert "no valid ingested batch to train on" in details["errors"][0]
    assert "production_model" in details["assets_affected"]
    assert webhook[0]["title"] == f"run failure #{incident['id']}"
    assert webhook[0]["failed_steps"] == ["training_set"]
    (escalation,) = defs.resources["decisions"].incidents("escalation")
    assert "webhook (HTTP 204)" in escalation["reason"]


def test_without_a_webhook_the_incident_goes_to_the_log(settings, instance, monkeypatch):
    monkeypatch.delenv("UNIFIED_AI_ESCALATION_WEBHOOK", raising=False)
    defs = build_definitions(settings)
    _evaluate_sensor(defs, instance, _failed_run(defs, instance))
    (escalation,) = defs.resources["decisions"].incidents("escalation")
    assert escalation["reason"].endswith("escalated via log")


def _run_of(job: dg.JobDefinition, instance) -> dg.ExecuteInProcessResult:
    result = job.execute_in_process(instance=instance, raise_on_error=False)
    assert not result.success
    return result


@dg.op
def refusing_step() -> None:
    from unified_assets.services.refusals import refused

    raise refused("rollback refused and recorded: 'mallory' may not roll back\nsecond line")


@dg.op
def crashing_step() -> None:
    raise RuntimeError("disk on fire")


@dg.job
def refused_request() -> None:
    refusing_step()


@dg.job
def refused_and_crashed() -> None:
    refusing_step()
    crashing_step()


def test_a_refused_request_fails_with_one_line_and_files_no_incident(settings, instance, webhook):
    defs = build_definitions(settings)
    result = _run_of(refused_request, instance)
    (failure,) = [e for e in result.all_events if e.is_step_failure]
    data = failure.event_specific_data.user_failure_data
    assert data.description == "rollback refused and recorded: 'mallory' may not roll back"
    _evaluate_sensor(defs, instance, result)
    store = defs.resources["decisions"]
    assert store.incidents("run_failure") == [] and store.incidents("escalation") == []
    assert webhook == []


def test_a_message_that_reads_like_a_refusal_is_still_an_incident(settings, instance, webhook):
    """The distinction is the marker the refusing step sets, not the words of the message."""

    @dg.op
    def looks_refused() -> None:
        raise dg.Failure("rollback refused and recorded: but nothing set the marker")

    @dg.job
    def unmarked() -> None:
        looks_refused()

    defs = build_definitions(settings)
    result = _run_of(unmarked, instance)
    _evaluate_sensor(defs, instance, result)
    (incident,) = defs.resources["decisions"].incidents("run_failure")
    assert incident["details"]["errors"] == [
        "rollback refused and recorded: but nothing set the marker"]
    assert incident["reason"].endswith("failed at looks_refused: rollback refused and recorded: "
                                       "but nothing set the marker")


def test_a_real_failure_beside_a_refusal_is_an_incident_naming_only_the_failure(
    settings, instance, webhook
):
    defs = build_definitions(settings)
    result = _run_of(refused_and_crashed, instance)
    _evaluate_sensor(defs, instance, result)
    (incident,) = defs.resources["decisions"].incidents("run_failure")
    assert incident["details"]["failed_steps"] == ["crashing_step"]
    assert "disk on fire" in incident["details"]["errors"][0]
    assert webhook[0]["failed_steps"] == ["crashing_step"]
