"""A retrain the sensors start is planned where its steps will run: on the Ray deployment the
plan is made against the Ray cluster the executor submits to, and a cluster that does not
answer means no launch (the evidence waits), never a launch planned against this host."""

from __future__ import annotations

import dataclasses

import dagster as dg

from sensors.retrain import ray_address_of, retrain_request
from tests.browser.conftest import free_port
from unified_assets.definitions import build_definitions
from unified_assets.placement.policy import DEFAULT_POLICY


def test_the_plan_is_made_against_the_ray_cluster_of_the_executor(settings):
    local = build_definitions(settings).resolve_job_def("train_evaluate_promote")
    assert ray_address_of(local) is None
    ray = dataclasses.replace(settings, deployment="ray", ray_address="http://10.1.2.3:8265")
    job = build_definitions(ray).resolve_job_def("train_evaluate_promote")
    assert ray_address_of(job) == "http://10.1.2.3:8265"


def test_a_ray_cluster_that_does_not_answer_launches_nothing_and_says_why(settings, instance):
    address = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    defs = build_definitions(dataclasses.replace(settings, deployment="ray", ray_address=address))
    with dg.build_sensor_context(instance=instance, definitions=defs) as context:
        outcome = retrain_request(context, "train_evaluate_promote", DEFAULT_POLICY,
                                  run_key="k", tags={})
    assert isinstance(outcome, str), outcome
    assert outcome.startswith("no placement: ") and f"Ray cluster at {address} did not answer" \
        in outcome
