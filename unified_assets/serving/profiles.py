"""What each part of the support workflow needs (compute profiles) and the rules a request
is decided by. Plain data: the code location, the deployer and the replicas all read it.

The policy file's `placement.profiles` may hold rules for `serve-cpu` and `serve-gpu`; when
it does not, they follow the rules of `cpu-light` and `gpu-training` (the same promise: CPU
work waits for a slot, the GPU part degrades to CPU, waits or escalates as the policy says;
`placement.policy.FOLLOWS`), so the shipped policy places serving without a new section."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from unified_assets.compute import ComputeProfile

# Replicas answer requests: small and latency-bound, unlike the batch profiles of training.
SERVE_CPU = ComputeProfile(name="serve-cpu", device="cpu", cpu="250m", memory="512Mi",
                           latency="interactive", pool_name="light-pool")
SERVE_GPU = ComputeProfile(name="serve-gpu", device="gpu", cpu="500m", memory="1Gi", gpus=1,
                           latency="interactive")
SERVE_PROFILES = {p.name: p for p in (SERVE_CPU, SERVE_GPU)}

# The parts of one request: Serve deployment name, compute profile, Serve application.
SUPPORT_APP, FRAUD_APP = "support", "fraud"
PARTS: dict[str, tuple[str, ComputeProfile, str]] = {
    "ingress": ("SupportIngress", SERVE_CPU, SUPPORT_APP),
    "classify": ("Classifier", SERVE_CPU, SUPPORT_APP),
    "retrieve": ("Retriever", SERVE_CPU, SUPPORT_APP),
    "explain": ("Explainer", SERVE_GPU, SUPPORT_APP),
    "fraud": ("FraudModel", SERVE_CPU, FRAUD_APP),
}
# The most requests one replica of each deployment takes at once (`max_ongoing_requests`);
# the policy's autoscaling targets must stay below them (unified_assets/policy.py).
MAX_ONGOING_REQUESTS: dict[str, int] = {"SupportIngress": 64, "Classifier": 16,
                                        "Retriever": 32, "Explainer": 8, "FraudModel": 32}


class ServingRules(BaseModel):
    """What decides a request's outcome and how long each part may take. Defaults are the
    shipped behaviour; the `serving` asset's config overrides them per deployment."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    min_intent_confidence: float = Field(
        default=0.5, ge=0, le=1, description="Below this the intent is unclear: escalate.")
    escalate_risk: float = Field(
        default=0.6, ge=0, le=1,
        description="A recent approved payment scoring at least this fraud risk: escalate.")
    escalate_intents: tuple[str, ...] = Field(
        default=("fraud_report", "other"),
        description="Intents a person always handles (a reported fraud; anything the workflow "
        "does not answer).")
    on_fraud_unavailable: Literal["escalate", "retry"] = Field(
        default="escalate", description="The fraud service still down after its retries.")
    fraud_timeout_s: float = Field(default=2.0, gt=0, description="Per HTTP attempt.")
    fraud_attempts: int = Field(default=3, ge=1, le=10, description="HTTP attempts in all.")
    fraud_backoff_s: float = Field(default=0.1, ge=0, description="Before the 2nd attempt; doubles.")
    fraud_breaker_failures: int = Field(
        default=5, ge=0,
        description="Requests in a row whose fraud check failed (every attempt) before a "
        "replica stops calling the service for `fraud_breaker_open_s`: meanwhile a request is "
        "a retry (503), or a case when a person handles its intent anyway. 0: never.")
    fraud_breaker_open_s: float = Field(
        default=10.0, gt=0, description="How long the breaker stays open before one request "
        "probes the service again.")
    part_timeout_s: float = Field(default=5.0, gt=0, description="classify, retrieve, explain.")
    latency_budget_s: float = Field(
        default=2.0, ge=0,
        description="How long a request may wait for a part without replicas (`wait` rules) "
        "before it is answered with retry.")
    max_in_flight: int = Field(
        default=16, ge=1,
        description="Requests one ingress replica works on at once. One more is answered at "
        "once with 503 and Retry-After (`shed` in the audit), not queued: under overload the "
        "service answers what it can in time and says so for the rest, instead of answering "
        "everything late (bench/RESULTS.md, the serving spike).")
    max_message_chars: int = Field(default=1000, ge=10)
    max_body_bytes: int = Field(default=16_384, ge=256)
    recent_transactions: int = Field(default=8, ge=1, le=50)
