"""Serving group: the intent model of the support workflow and the `serving` deployment of
the champion and the workflow to Ray Serve; the sensor that keeps serving on the champion;
the sensor that records each scaling event on traffic (`serving_scaling`); and the job a
person closes an escalated case with from the UI.

`serving` is its own group rather than part of `deployment`: the lifecycle job selects the
deployment group, and every lifecycle run (the demo, the tests) would then start Ray. Once
serving has been deployed, `production_model` moves live traffic in the promotion's or the
rollback's own run (serving/follow.py: the version swapped in the running deployments,
recorded as an observation here); `serving_follows_champion` redeploys when that could not be
done (see its description)."""

import json
from typing import Any

import dagster as dg
from pydantic import Field

from resources import DatasetResource, MlflowRegistry, PolicyResource
from resources.decision_store import DecisionStore
from unified_assets.compute import CPU_LIGHT
from unified_assets.metadata import OWNERS, markdown_table
from unified_assets.run_tags import started_because
from unified_assets.services.refusals import refused
from unified_assets.serving.follow import CHAMPION_VERSION, SERVING_KEY, served
from unified_assets.serving.resource import ServingTarget

SERVING_GROUP = "serving"
MANUAL = started_because("manual")


class IntentModelConfig(dg.Config):
    per_intent: int = Field(default=400, ge=20, description="Generated messages per intent.")
    pairs: int = Field(default=150, ge=0, description="Two-intent messages per pair of intents.")
    seed: int = Field(default=11, description="Seed of the message generator.")
    c: float = Field(default=8.0, gt=0, description="Inverse L2 strength of each regression.")


@dg.asset(
    group_name=SERVING_GROUP,
    kinds={"scikit-learn", "mlflow"},
    owners=OWNERS,
    description=(
        "The support workflow's intent classifier (refund status, decline reason, fraud "
        "report, other): TF-IDF and one logistic regression per intent, trained on seeded "
        "generated support messages and registered in MLflow as `support-intent`. The same "
        "messages give the same model: an unchanged one reuses its registered version."
    ),
    **CPU_LIGHT.asset_kwargs(),
)
def support_intent_model(context: dg.AssetExecutionContext, config: IntentModelConfig,
                         mlflow_registry: MlflowRegistry) -> dg.Output[dict]:
    from importlib.metadata import version as installed

    from unified_assets.serving.intent_model import (
        CONTENT_HASH_TAG,
        FAMILY,
        MODEL_NAME,
        IntentParams,
        train_intent_model,
    )

    trained = train_intent_model(IntentParams(**config.model_dump()))
    client = mlflow_registry.client()
    existing = [v for v in client.search_model_versions(f"name='{MODEL_NAME}'")
                if v.tags.get(CONTENT_HASH_TAG) == trained.content_hash]
    if existing:
        version, reused = str(max(int(v.version) for v in existing)), True
    else:
        registered = mlflow_registry.log_candidate(
            model_name=MODEL_NAME, family=FAMILY, flavor="pyfunc", model=trained.model,
            params=config.model_dump(), metrics=trained.metrics,
            tags={CONTENT_HASH_TAG: trained.content_hash, "dagster_run_id": context.run_id},
            pip_requirements=[f"scikit-learn=={installed('scikit-learn')}", "pandas"])
        version, reused = registered.version, False
    ref = {"name": MODEL_NAME, "version": version, "tracking_uri": mlflow_registry.tracking_uri}
    return dg.Output(ref, metadata={
        "model_version": dg.MetadataValue.text(version),
        "reused_version": dg.MetadataValue.bool(reused),
        "content_hash": dg.MetadataValue.text(trained.content_hash),
        **{k: dg.MetadataValue.float(round(v, 4)) for k, v in trained.metrics.items()},
    })


class ServingConfig(dg.Config):
    http_host: str = Field(default="127.0.0.1", description="Where Serve's HTTP proxy listens "
                           "(0.0.0.0 to accept other machines).")
    http_port: int = Field(default=8000, description="Serve's HTTP port (set once per Ray instance).")
    fraud_url: str = Field(default="", description="The fraud service's URL as the workflow "
                           "calls it; empty: /fraud behind the same proxy.")
    replicas: dict[str, int] = Field(default_factory=dict, description="A fixed number of "
                                     "replicas for a part (ingress, classify, retrieve, explain, "
                                     "fraud), which then does not scale; the others scale on "
                                     "traffic as the policy's serving.autoscaling says.")
    customers: int = Field(default=500, ge=1, description="Customers in the retrieval store.")
    store_seed: int = Field(default=7, description="Seed of the retrieval store.")
    min_intent_confidence: float = Field(default=0.5, ge=0, le=1)
    escalate_risk: float = Field(default=0.6, ge=0, le=1)
    fraud_timeout_s: float = Field(default=2.0, gt=0)
    fraud_attempts: int = Field(default=3, ge=1)
    fraud_breaker_failures: int = Field(
        default=5, ge=0, description="Failed fraud checks in a row before a replica stops "
        "calling the service for fraud_breaker_open_s (requests meanwhile: retry); 0: never.")
    fraud_breaker_open_s: float = Field(default=10.0, gt=0)
    latency_budget_s: float = Field(default=2.0, ge=0)
    max_in_flight: int = Field(default=16, ge=1, description="Requests one ingress replica "
                               "works on at once; more are answered at once with 503 (shed).")
    timeout_s: float = Field(default=600.0, gt=0, description="How long the deployment may take.")

    def rules(self):
        from unified_assets.serving.profiles import ServingRules

        return ServingRules(**self.model_dump(include={
            "min_intent_confidence", "escalate_risk", "fraud_timeout_s", "fraud_attempts",
            "fraud_breaker_failures", "fraud_breaker_open_s", "latency_budget_s",
            "max_in_flight"}))


@dg.asset(
    group_name=SERVING_GROUP,
    deps=["production_model"],
    kinds={"ray"},
    owners=OWNERS,
    description=(
        "The champion and the support workflow on Ray Serve (RAY_ADDRESS, or a Ray instance "
        "started on this machine): `POST /support` classifies the request (CPU), retrieves "
        "the customer's payments, explains the fraud model's score (GPU profile, CPU when the "
        "policy degrades it), checks fraud with the champion as its own service (HTTP, "
        "timeout, retries) and answers, retries or escalates to a case. Metadata: the version "
        "served, replicas and where each part was placed and why. Every champion change "
        "moves it in the change's own run (an observation here says so); "
        "`serving_follows_champion` redeploys when that failed."
    ),
    **CPU_LIGHT.asset_kwargs(),
)
def serving(context: dg.AssetExecutionContext, config: ServingConfig, support_intent_model: dict,
            decisions: DecisionStore, mlflow_registry: MlflowRegistry, dataset: DatasetResource,
            policy: PolicyResource, serving_target: ServingTarget) -> dg.MaterializeResult:
    from unified_assets.placement.ray_capacity import fetch_ray_capacity
    from unified_assets.services.champion import ChampionLedger
    from unified_assets.serving.deploy import (
        DeployError,
        ModelRef,
        ServingPlan,
        deploy,
        place_parts,
        replicas,
        serve_config,
    )
    from unified_assets.serving.profiles import PARTS

    spec = dataset.spec
    champion = ChampionLedger(decisions, mlflow_registry).champion(spec.name)
    if champion is None:
        raise refused(f"nothing to serve: {spec.name} has no champion yet")
    dashboard = serving_target.dashboard()
    capacity = fetch_ray_capacity(dashboard, timeout=60)
    placement = policy.policy.placement
    placed = place_parts(capacity, placement)
    unknown = sorted(set(config.replicas) - set(PARTS))
    if unknown:
        raise refused(f"replicas: unknown part(s) {', '.join(unknown)}; the parts are "
                      f"{', '.join(PARTS)}")
    rules = policy.policy.serving.rules()
    plan = ServingPlan(
        fraud_model=ModelRef(spec.name, champion, mlflow_registry.tracking_uri),
        intent_model=ModelRef(**support_intent_model),
        numeric=list(spec.numeric_features), categorical=list(spec.categorical_features),
        audit_path=str(serving_target.audit_path),
        # A sqlite store is a local file; any other URL is a secret the replicas read from
        # their own environment (UNIFIED_AI_DECISIONS_URL), never from the Serve config.
        decisions_url=decisions.url if decisions.url.startswith("sqlite") else None,
        store={"seed": config.store_seed, "customers": config.customers, "per_customer": 8},
        rules=config.rules(), http_host=config.http_host, http_port=config.http_port,
        fraud_url=config.fraud_url or None,
        autoscaling={part: rules[name].autoscaling_config()
                     for part, (name, _, _) in PARTS.items()},
        replicas={part: n for part, n in config.replicas.items() if part in PARTS})
    serve = serve_config(plan, placed, capacity, placement)
    try:
        details = deploy(dashboard, serve, timeout_s=config.timeout_s)
    except DeployError as error:
        raise dg.Failure(str(error)) from None
    endpoint = {"url": plan.support_url, "dashboard": dashboard, CHAMPION_VERSION: champion,
                "model": spec.name, "intent_version": plan.intent_model.version}
    serving_target.folder.mkdir(parents=True, exist_ok=True)
    serving_target.endpoint_file.write_text(json.dumps(endpoint, indent=2))
    rows = replicas(details)
    context.log.info(f"serving {spec.name} v{champion} at {plan.support_url} "
                     f"({len(rows)} replicas)")
    return dg.MaterializeResult(metadata={
        CHAMPION_VERSION: dg.MetadataValue.text(champion),
        "model": dg.MetadataValue.text(spec.name),
        "intent_model_version": dg.MetadataValue.text(plan.intent_model.version),
        "endpoint": dg.MetadataValue.url(plan.support_url),
        "ray_dashboard": dg.MetadataValue.url(dashboard),
        "replicas": dg.MetadataValue.int(len(rows)),
        "replicas_detail": markdown_table(rows, ["app", "deployment", "state", "node"]),
        "placement": markdown_table(
            [{"part": part, "target": d.target, "where": d.where, "fallback": d.fallback,
              "reason": d.reason} for part, d in placed.items()],
            ["part", "target", "where", "fallback", "reason"]),
        "autoscaling": markdown_table(_scaling_rows(plan), [
            "deployment", "part", "replicas", "min_replicas", "max_replicas",
            "target_ongoing_requests", "upscale_delay_s", "downscale_delay_s"]),
        "autoscaling_config": dg.MetadataValue.json(
            {PARTS[part][0]: plan.scaling(part) for part in PARTS}),
        "placement_explain": dg.MetadataValue.text(
            f"{placed['explain'].target}: {placed['explain'].reason}"),
        "capacity": dg.MetadataValue.text(_capacity_summary(capacity)),
        "serve_config": dg.MetadataValue.json(_redacted(serve)),
    })


def _scaling_rows(plan: Any) -> list[dict]:
    """Per deployment: autoscaled between its bounds (the policy's), or fixed replicas."""
    from unified_assets.serving.profiles import PARTS

    rows = []
    for part, (name, _, _) in PARTS.items():
        scaling = plan.scaling(part)
        rule = scaling.get("autoscaling_config") or {}
        rows.append({"deployment": name, "part": part,
                     "replicas": "autoscaled" if rule else f"fixed {scaling['num_replicas']}",
                     **{k: rule.get(k, "") for k in ("min_replicas", "max_replicas",
                                                     "target_ongoing_requests", "upscale_delay_s",
                                                     "downscale_delay_s")}})
    return rows


def _capacity_summary(capacity: Any) -> str:
    pools = capacity.pools()
    return "; ".join(f"{pool or 'unlabelled'}: {row['nodes']:g} node(s), {row['gpus_total']:g} "
                     f"GPU(s), {row['cpus_total']:g} CPU(s)" for pool, row in pools.items()) \
        or "no live node"


def _redacted(config: dict) -> dict:
    """The Serve config as metadata, without the placement policy's bulk."""
    out = json.loads(json.dumps(config))
    for app in out["applications"]:
        for deployment in app["deployments"]:
            deployment["user_config"].pop("placement_policy", None)
    return out


deploy_serving_job = dg.define_asset_job(
    "deploy_serving", selection=[support_intent_model, serving], tags=MANUAL,
    description="Deploy the champion and the support workflow to Ray Serve (the intent model "
    "is trained again only when its messages changed).")


def build_serving_sensor(job: Any = deploy_serving_job) -> dg.SensorDefinition:
    @dg.sensor(
        name="serving_follows_champion",
        job=job,
        minimum_interval_seconds=15,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="Once `serving` has been deployed, redeploys it whenever the champion "
        "(the ledger's) differs from the version it serves: the promotion or rollback run "
        "moves live traffic itself, so this acts when that run could not (Ray's dashboard "
        "down, a change made outside Dagster). Until the first deployment it does nothing, so "
        "no Ray instance starts by itself.",
    )
    def serving_follows_champion(context: dg.SensorEvaluationContext, decisions: DecisionStore,
                                 dataset: DatasetResource):
        from unified_assets.services.champion import LedgerState

        current = served(context.instance)
        if current is None:
            return dg.SkipReason("serving was never deployed: materialize `serving` (job "
                                 "deploy_serving) once, and it follows the champion from then on")
        model = dataset.spec.name
        state = LedgerState(decisions.changes(model))
        if state.champion is None or state.champion == current.version:
            return dg.SkipReason(f"serving v{current.version}, the champion of {model}")
        reason = f"champion of {model} is v{state.champion}, serving v{current.version}"
        return dg.RunRequest(run_key=f"serving:{model}:change-{state.last_seq}:v{state.champion}",
                             tags=started_because("champion-change", reason))

    return serving_follows_champion


SCALING_SENSOR = "serving_scaling"


def _dashboard_served(context: dg.SensorEvaluationContext) -> str | None:
    """The Ray dashboard the last `serving` materialization deployed to."""
    event = context.instance.get_latest_materialization_event(SERVING_KEY)
    if event is None or event.asset_materialization is None:
        return None
    entry = event.asset_materialization.metadata.get("ray_dashboard")
    return str(entry.value).rstrip("/") if entry is not None else None


def build_scaling_sensor() -> dg.SensorDefinition:
    @dg.sensor(
        name=SCALING_SENSOR,
        minimum_interval_seconds=10,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="Reads Ray Serve's state (the dashboard's REST API) where `serving` was "
        "deployed and records each change in a deployment's running replicas as an observation "
        "on `serving`: replicas before and after, Serve's target, the autoscaling rule from the "
        "policy, and the requests in the last minute with their p50/p99 latency (the request "
        "audit), so the UI shows when and why the service scaled. Skips, saying why, until "
        "`serving` is deployed or while Serve does not answer.",
    )
    def serving_scaling(context: dg.SensorEvaluationContext, serving_target: ServingTarget):
        import time

        from unified_assets.serving.deploy import DeployError, serve_details
        from unified_assets.serving.scaling import changes, read_scales, traffic

        dashboard = _dashboard_served(context)
        if dashboard is None:
            return dg.SkipReason("serving was never deployed: nothing scales yet (materialize "
                                 "`serving`, job deploy_serving)")
        try:
            details = serve_details(dashboard, timeout=10)
        except (OSError, ValueError, DeployError) as error:
            return dg.SkipReason(f"Serve's state at {dashboard} could not be read: "
                                 f"{type(error).__name__}: {str(error)[:300]}")
        scales = read_scales(details or {})
        if not scales:
            return dg.SkipReason(f"no deployment of the support workflow runs on Serve at "
                                 f"{dashboard}")
        cursor = json.loads(context.cursor) if context.cursor else {}
        # Another cluster (a new RAY_ADDRESS, a restarted local instance): a new baseline.
        seen = cursor.get("replicas", {}) if cursor.get("dashboard") == dashboard else {}
        now = {name: scale.running for name, scale in scales.items()}
        new_cursor = json.dumps({"dashboard": dashboard, "replicas": now}, sort_keys=True)
        events = changes(seen, scales)
        if not events:
            summary = ", ".join(f"{name} {n}" for name, n in now.items())
            return dg.SensorResult(cursor=new_cursor, skip_reason=(
                f"replicas unchanged: {summary}" if seen else f"baseline taken: {summary}"))
        load = traffic(serving_target.audit_path, time.time())
        observations = []
        for event in events:
            rule = event.scale.autoscaling or {}
            metadata: dict[str, Any] = {
                "deployment": event.deployment,
                "direction": event.direction,
                "replicas_before": dg.MetadataValue.int(event.before),
                "replicas_after": dg.MetadataValue.int(event.after),
                "target_replicas": dg.MetadataValue.int(event.scale.target),
                "serve_status": f"{event.scale.status} ({event.scale.trigger})",
                "reason": event.why(load),
                "ray_dashboard": dg.MetadataValue.url(dashboard),
                "requests_last_minute": dg.MetadataValue.int(load["requests_last_minute"]),
                "requests_per_s": dg.MetadataValue.float(load["requests_per_s"]),
            }
            for key in ("p50_latency_ms", "p99_latency_ms"):
                if load[key] is not None:
                    metadata[key] = dg.MetadataValue.float(load[key])
            for key in ("min_replicas", "max_replicas", "target_ongoing_requests",
                        "upscale_delay_s", "downscale_delay_s"):
                if rule.get(key) is not None:
                    metadata[key] = dg.MetadataValue.float(float(rule[key]))
            if event.direction == "up" and event.scale.newest_replica_started:
                metadata["replica_started_at"] = dg.MetadataValue.timestamp(
                    event.scale.newest_replica_started)
            observations.append(dg.AssetObservation(SERVING_KEY, metadata=metadata))
            context.log.info(event.why(load))
        return dg.SensorResult(asset_events=observations, cursor=new_cursor)

    return serving_scaling


class ResolveCaseConfig(dg.Config):
    case_id: str = Field(description="The case to close (`unified-ai cases`).")
    by: str = Field(default="", description="Who answers; an approver under the policy.")
    answer: str = Field(default="", description="The answer given to the customer.")
    token: str = Field(default="", description="`unified-ai sign approve CASE --model "
                       "unified-ai/support-cases --by NAME --reason ANSWER`; required when the "
                       "policy requires signatures.")


@dg.op(description="Close an escalated support case with an answer, under the approval rules.")
def resolve_case_op(context: dg.OpExecutionContext, config: ResolveCaseConfig,
                    decisions: DecisionStore, policy: PolicyResource) -> None:
    from unified_assets.serving.cases import CaseRefused, resolve_case

    try:
        case = resolve_case(decisions, policy.policy, config.case_id.strip(), config.by.strip(),
                            config.answer, token=config.token.strip() or None, source="ui")
    except CaseRefused as why:
        raise refused(f"case not resolved (refusal recorded): {why}") from None
    context.log.info(f"{case.case_id} resolved by {case.resolved_by}")


@dg.job(name="resolve_support_case", tags=MANUAL,
        description="Close an escalated support case (as `unified-ai cases resolve`).")
def resolve_support_case_job() -> None:
    resolve_case_op()
