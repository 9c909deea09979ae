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
