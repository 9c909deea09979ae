"""Scaling on traffic on a real Ray Serve (tests/serving/conftest.py): `serving` deployed
under a policy whose ingress scales quickly (1..2 replicas, one ongoing request per replica,
sub-second delays; every other part pinned at one replica so nothing else moves on two
cores), a burst of concurrent requests scales it up and, once the burst ends, down; the
`serving_scaling` sensor, ticked as the daemon would, records both on `serving`. Plus the
sensor's skips and its traffic figures, without Ray."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import dagster as dg
import pytest

from tests.serving.conftest import ServingWorld

pytestmark = pytest.mark.slow

SCALED = "SupportIngress"
PINNED = {"min_replicas": 1, "max_replicas": 1}
QUICK = {"min_replicas": 1, "max_replicas": 2, "target_ongoing_requests": 1,
         "upscale_delay_s": 0.5, "downscale_delay_s": 1.5, "look_back_period_s": 1.5,
         "metrics_interval_s": 0.5}
BURST_THREADS = 8
WAIT_S = 90  # for Serve to act; generous: other suites share the two cores


def _tick(sensor: dg.SensorDefinition, instance: dg.DagsterInstance, resources: dict,
          cursor: str | None) -> tuple[str, str | None]:
    """One evaluation as the daemon runs it: observations stored, the cursor kept; what it
    said when it skipped ("" when it recorded something)."""
    with dg.build_sensor_context(instance=instance, cursor=cursor, resources=resources) as context:
        result = sensor(context)
    if isinstance(result, dg.SkipReason):
        return result.skip_message or "", cursor
    assert isinstance(result, dg.SensorResult) and not result.run_requests
    for event in result.asset_events or []:
        instance.report_runless_asset_event(event)
    skipped = result.skip_reason.skip_message if result.skip_reason else ""
    return skipped or "", result.cursor or cursor


def _observations(instance: dg.DagsterInstance) -> list[dict]:
    records = instance.fetch_observations(dg.AssetKey("serving"), limit=100).records
    return [{k: v.value for k, v in r.asset_observation.metadata.items()}
            for r in sorted(records, key=lambda r: r.storage_id)]


def _serve_state(world: ServingWorld) -> dict:
    from unified_assets.serving.deploy import serve_details
    from unified_assets.serving.scaling import read_scales

    return {n: (s.running, s.target, s.status) for n, s in read_scales(
        serve_details(world.dashboard)).items()}


def test_a_burst_scales_the_ingress_up_then_down_and_both_are_observed(
        world: ServingWorld, tmp_path: Path):
    from resources import PolicyResource
    from tests.policies import write_policy
    from unified_assets.assets.serving import build_scaling_sensor, serving, support_intent_model

    rules = {name: PINNED for name in ("Classifier", "Retriever", "Explainer", "FraudModel")}
    policy = write_policy(tmp_path, {"serving": {"autoscaling": {**rules, SCALED: QUICK}}})
    resources = {**world.resources, "policy": PolicyResource(path=str(policy))}
    deployed = dg.materialize(
        [support_intent_model, serving], selection=[serving], resources=resources,
        instance=world.instance,
        run_config={"ops": {"serving": {"config": {"http_port": world.http_port}}}})
    assert deployed.success
    metadata = deployed.asset_materializations_for_node("serving")[0].metadata
    sent = metadata["autoscaling_config"].value
    assert sent[SCALED]["autoscaling_config"] == QUICK
    assert sent["Classifier"]["autoscaling_config"]["max_replicas"] == 1
    assert "| SupportIngress | ingress | autoscaled | 1 | 2 | 1 |" in metadata["autoscaling"].value
    # Serve runs what the policy says (its defaults filled in).
    from unified_assets.serving.deploy import serve_details

    running = serve_details(world.dashboard)["applications"]["support"]["deployments"][SCALED]
    assert running["deployment_config"]["autoscaling_config"]["target_ongoing_requests"] == 1

    sensor = build_scaling_sensor()
    sensor_resources = {"serving_target": world.resources["serving_target"]}
    first, cursor = _tick(sensor, world.instance, sensor_resources, None)
    assert "baseline taken" in first and f"{SCALED} 1" in first
    again, cursor = _tick(sensor, world.instance, sensor_resources, cursor)
    assert "replicas unchanged" in again and not _observations(world.instance)

    stop = threading.Event()
    answered: list[int] = []

    def burst() -> None:
        while not stop.is_set():
            status, _ = world.ask({"customer_id": 3, "message": "where is my refund?"})
            answered.append(status)

    threads = [threading.Thread(target=burst, daemon=True) for _ in range(BURST_THREADS)]
    for thread in threads:
        thread.start()

    def until(direction: str) -> dict:
        nonlocal cursor
        deadline = time.monotonic() + WAIT_S
        while True:
            _, cursor = _tick(sensor, world.instance, sensor_resources, cursor)
            seen = [o for o in _observations(world.instance)
                    if o["deployment"] == SCALED and o["direction"] == direction]
            if seen:
                return seen[0]
            assert time.monotonic() < deadline, (
                f"{SCALED} did not scale {direction} within {WAIT_S}s: {_serve_state(world)}, "
                f"{len(answered)} requests answered")
            time.sleep(0.25)

    try:
        up = until("up")
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=60)
    # Answers (a loaded machine may answer some with 503 retry, as the policy says).
    assert answered.count(200) > len(answered) / 2, sorted(set(answered))
    down = until("down")

    assert (up["replicas_before"], up["replicas_after"]) == (1, 2)
    assert (down["replicas_before"], down["replicas_after"]) == (2, 1)
    assert up["target_replicas"] == 2 and up["target_ongoing_requests"] == 1
    assert (up["min_replicas"], up["max_replicas"]) == (1, 2)
    assert "scaled up 1 -> 2" in up["reason"] and "above the target 1" in up["reason"]
    assert "scaled down 2 -> 1" in down["reason"] and "below the target" in down["reason"]
    # The traffic that caused it, from the request audit.
    assert up["requests_last_minute"] > 0 and up["p99_latency_ms"] >= up["p50_latency_ms"] > 0
    assert down["requests_last_minute"] > 0
    assert up["replica_started_at"] > 0
    # Each change once, and only the ingress moved (the others are pinned at one replica).
    _, cursor = _tick(sensor, world.instance, sensor_resources, cursor)
    observed = [(o["deployment"], o["direction"]) for o in _observations(world.instance)]
    assert observed == [(SCALED, "up"), (SCALED, "down")], observed
    assert json.loads(cursor)["replicas"] == dict.fromkeys(
        ("SupportIngress", "Classifier", "Retriever", "Explainer", "FraudModel"), 1)


def test_the_sensor_skips_saying_why_until_serve_answers(tmp_path: Path):
    from tests.ray.conftest import free_port
    from unified_assets.assets.serving import SERVING_KEY, build_scaling_sensor
    from unified_assets.serving.resource import ServingTarget

    sensor = build_scaling_sensor()
    resources = {"serving_target": ServingTarget(home=str(tmp_path))}
    with dg.instance_for_test() as instance:
        never, _ = _tick(sensor, instance, resources, None)
        assert "never deployed" in never
        dashboard = f"http://127.0.0.1:{free_port()}"  # nothing listens there
        instance.report_runless_asset_event(dg.AssetMaterialization(
            SERVING_KEY, metadata={"ray_dashboard": dg.MetadataValue.url(dashboard)}))
        down, cursor = _tick(sensor, instance, resources, None)
        assert f"Serve's state at {dashboard} could not be read" in down
        assert cursor is None


def test_traffic_figures_come_from_the_audits_last_minute(tmp_path: Path):
    from datetime import UTC, datetime

    from unified_assets.serving.audit import append_record
    from unified_assets.serving.scaling import traffic

    now = time.time()
    audit = tmp_path / "audit.jsonl"
    assert traffic(audit, now)["requests_last_minute"] == 0
    for ago, latency in [(120, 5000.0), *[(i / 2, float(10 * (i + 1))) for i in range(100)]]:
        append_record(audit, {"at": datetime.fromtimestamp(now - ago, UTC).isoformat(),
                              "latency_ms": latency})
    with audit.open("a") as handle:
        handle.write('{"torn": ')
    figures = traffic(audit, now)
    assert figures == {"requests_last_minute": 100, "requests_per_s": round(100 / 60, 3),
                       "p50_latency_ms": 500.0, "p99_latency_ms": 990.0}


def test_the_serve_config_carries_the_policys_autoscaling_unless_a_part_is_pinned():
    from ray.serve.schema import ServeDeploySchema

    from tests.serving.test_serving_parts import GPU_NODE, HEAD
    from unified_assets.placement.policy import DEFAULT_POLICY
    from unified_assets.placement.snapshot import RayCapacity
    from unified_assets.policy import load_policy
    from unified_assets.serving.deploy import ModelRef, ServingPlan, place_parts, serve_config
    from unified_assets.serving.profiles import PARTS

    rules = load_policy().serving.rules()
    ref = ModelRef("m", "3", "sqlite:///x.db")
    plan = ServingPlan(fraud_model=ref, intent_model=ref, numeric=["amount"], categorical=[],
                       audit_path="/tmp/a.jsonl", decisions_url=None, replicas={"explain": 1},
                       autoscaling={part: rules[name].autoscaling_config()
                                    for part, (name, _, _) in PARTS.items()})
    capacity = RayCapacity(nodes=(HEAD, GPU_NODE))
    config = serve_config(plan, place_parts(capacity, DEFAULT_POLICY), capacity, DEFAULT_POLICY)
    ServeDeploySchema.model_validate(config)  # what Serve's REST API accepts
    deployments = {d["name"]: d for app in config["applications"] for d in app["deployments"]}
    assert deployments["Explainer"]["num_replicas"] == 1
    assert "autoscaling_config" not in deployments["Explainer"]
    for name in ("SupportIngress", "Classifier", "Retriever", "FraudModel"):
        assert deployments[name]["autoscaling_config"] == rules[name].autoscaling_config()
        assert "num_replicas" not in deployments[name]
    ingress = deployments["SupportIngress"]["user_config"]
    assert ingress["replicas"] == {"ingress": 1, "classify": 1, "retrieve": 1, "explain": 1,
                                   "fraud": 1}
