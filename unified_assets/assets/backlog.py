"""Serving group, batch side: the support workflow over backlogs of requests, and the daily
summary of the request audit.

- `support_backlog`: one partition per backlog file a person drops in
  `<home>/serving/backlog/` (`NAME.jsonl`, one `POST /support` body a line); each line is
  validated as a request body is online, a bad line refused with its file and line number.
- `backlog_classified`, `backlog_retrieved`, `backlog_explained`, `backlog_fraud_checked`,
  `backlog_decided`: the five parts of the online workflow as assets over that partition,
  each with its compute profile (explain on the GPU profile, placed by the planner and on
  CPU when there is no CUDA), calling the functions the Serve replicas call
  (`unified_assets.serving.backlog`); escalations become cases as they do online.
- `request_audit`: per UTC day, the live requests of the audit log summarized.

The sensor `support_backlog_sensor` turns each new (or replaced) file into a partition and a
run of `run_support_backlog`; the schedule `request_audit_daily` summarizes yesterday."""


import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import dagster as dg
from pydantic import Field

from resources import DatasetResource, MlflowRegistry, PolicyResource
from resources.decision_store import DecisionStore
from unified_assets.compute import CPU_LIGHT, GPU_TRAINING
from unified_assets.metadata import OWNERS, listed, markdown_table, numbers, placement_metadata
from unified_assets.run_tags import started_because
from unified_assets.services.refusals import refused
from unified_assets.serving.customers import StoreSpec
from unified_assets.serving.profiles import ServingRules
from unified_assets.serving.resource import ServingTarget

SERVING_GROUP = "serving"
BACKLOGS = dg.DynamicPartitionsDefinition(name="support_backlogs")
# The audit's days (UTC); today's partition exists too and reads the day so far.
AUDIT_DAYS = dg.DailyPartitionsDefinition(start_date="2026-01-01", timezone="UTC", end_offset=1)
INTENT_MODEL_KEY = dg.AssetKey("support_intent_model")
MANUAL = started_because("manual")
PREVIEW = 20  # decisions listed in the metadata (all of them are in the answers file)
_RULES = ServingRules()
_STORE = StoreSpec()


class BacklogConfig(dg.Config):
    """The store and the decision rules a backlog is decided with: the `serving` asset's
    defaults, so a backlog is decided as live traffic is unless you change them here."""

    customers: int = Field(default=_STORE.customers, ge=1,
                           description="Customers in the retrieval store (as `serving`).")
    store_seed: int = Field(default=_STORE.seed, description="Seed of the retrieval store.")
    min_intent_confidence: float = Field(default=_RULES.min_intent_confidence, ge=0, le=1)
    escalate_risk: float = Field(default=_RULES.escalate_risk, ge=0, le=1)

    def rules(self) -> ServingRules:
        return ServingRules(min_intent_confidence=self.min_intent_confidence,
                            escalate_risk=self.escalate_risk)


def _rules(backlog: dict) -> ServingRules:
    return ServingRules(**backlog["rules"])


def _store(backlog: dict) -> Any:
    from unified_assets.serving.customers import build_store

    return build_store(StoreSpec(**backlog["store"]))


def _fraud_model(backlog: dict) -> Any:
    from unified_assets.serving.explain import load_fraud_model

    ref = backlog["fraud_model"]
    return load_fraud_model(ref["name"], ref["version"], ref["tracking_uri"], ref["numeric"],
                            ref["categorical"])


def _asked(case: Any) -> tuple[Any, Any]:
    """Who asked what in a case: tells one request from another that used the same id."""
    return case.customer_id, case.details.get("message")


def _counts(values: dict[str, int], prefix: str) -> dict[str, Any]:
    return {f"{prefix}{k}": dg.MetadataValue.int(v) for k, v in values.items()}


@dg.asset(
    group_name=SERVING_GROUP,
    partitions_def=BACKLOGS,
    kinds={"json"},
    owners=OWNERS,
    description=(
        "A backlog of support requests: one partition per file dropped in "
        "`<home>/serving/backlog/` (`NAME.jsonl`, one `POST /support` body a line, "
        "optionally with its own `request_id`). Each line is validated as a request body is "
        "online; a bad line is refused naming its file, line and HTTP status, and the rest go "
        "on. The fraud model (the champion now) and the rules the partition is decided with "
        "are fixed here, so every part uses the same."
    ),
    **CPU_LIGHT.asset_kwargs(),
)
def support_backlog(context: dg.AssetExecutionContext, config: BacklogConfig,
                    serving_target: ServingTarget, decisions: DecisionStore,
                    mlflow_registry: MlflowRegistry, dataset: DatasetResource,
                    policy: PolicyResource) -> dg.Output[dict]:
    import hashlib

    from unified_assets.services.champion import ChampionLedger
    from unified_assets.serving.backlog import backlog_files, read_backlog

    key, folder = context.partition_key, serving_target.backlog_folder
    files = backlog_files(folder)
    if key not in files:
        raise refused(f"no backlog file for partition {key} in {folder} (there: "
                      f"{listed(sorted(f.name for f in files.values()))})")
    found = files[key]
    spec = dataset.spec
    champion = ChampionLedger(decisions, mlflow_registry).champion(spec.name)
    if champion is None:
        raise refused(f"backlog {found.name} not decided: {spec.name} has no champion yet "
                      "(the fraud check needs one)")
    rules = config.rules()
    requests, bad = read_backlog(found.path, key, rules)
    digest = hashlib.sha256(found.path.read_bytes()).hexdigest()[:12]
    for line in bad:
        context.log.warning(f"{line['file']}:{line['line']}: refused ({line['status']}): "
                            f"{line['error']}")
    value = {
        "partition": key, "file": str(found.path), "sha256": digest, "requests": requests,
        "refused": bad, "rules": rules.model_dump(mode="json"),
        "store": {"seed": config.store_seed, "customers": config.customers,
                  "per_customer": _STORE.per_customer},
        "fraud_model": {"name": spec.name, "version": champion,
                        "tracking_uri": mlflow_registry.tracking_uri,
                        "numeric": list(spec.numeric_features),
                        "categorical": list(spec.categorical_features)},
    }
    return dg.Output(value, metadata={
        "file": dg.MetadataValue.path(str(found.path)),
        "file_sha256": digest,
        "lines": dg.MetadataValue.int(len(requests) + len(bad)),
        "requests": dg.MetadataValue.int(len(requests)),
        "refused_lines": dg.MetadataValue.int(len(bad)),
        "refused": markdown_table(bad[:PREVIEW], ["file", "line", "status", "error"]),
        "fraud_model_version": f"{spec.name} v{champion}",
        "customers": dg.MetadataValue.int(len({r["customer_id"] for r in requests})),
        "summary": (f"{found.name}: {len(requests)} request(s) to decide, {len(bad)} line(s) "
                    f"refused" + (f" ({listed([str(b['line']) for b in bad])})" if bad else "")),
        **placement_metadata(context, CPU_LIGHT, policy.policy.placement),
    })


@dg.asset(
    group_name=SERVING_GROUP,
    partitions_def=BACKLOGS,
    deps=[INTENT_MODEL_KEY],
    kinds={"scikit-learn", "mlflow"},
    owners=OWNERS,
    description=(
        "Part 1, classify (CPU profile): each backlog request's intents with the support "
        "intent model version `support_intent_model` last registered, read as the online "
        "classifier reads them."
    ),
    **CPU_LIGHT.asset_kwargs(),
)
def backlog_classified(context: dg.AssetExecutionContext, support_backlog: dict,
                       mlflow_registry: MlflowRegistry, policy: PolicyResource) -> dg.Output[dict]:
    from collections import Counter

    from unified_assets.serving import backlog
    from unified_assets.serving.intent_model import MODEL_NAME, load_intent_model

    event = context.instance.get_latest_materialization_event(INTENT_MODEL_KEY)
    entry = (event.asset_materialization.metadata.get("model_version")
             if event is not None and event.asset_materialization is not None else None)
    if entry is None:
        raise refused("no intent model: materialize `support_intent_model` first (the lineage "
                      "view, or `dagster asset materialize --select support_intent_model`; "
                      "no Ray needed)")
    model, label = load_intent_model(MODEL_NAME, str(entry.value), mlflow_registry.tracking_uri)
    classified = backlog.classify(model, support_backlog["requests"])
    rules = _rules(support_backlog)
    intents = Counter(c["intent"] for c in classified.values())
    unclear = sum(c["confidence"] < rules.min_intent_confidence for c in classified.values())
    return dg.Output({"version": label, "by_request": classified}, metadata={
        "intent_model_version": label,
        "requests": dg.MetadataValue.int(len(classified)),
        **_counts(dict(sorted(intents.items())), "intent_"),
        "multi_intent": dg.MetadataValue.int(sum(len(c["intents"]) > 1
                                                 for c in classified.values())),
        "unclear": dg.MetadataValue.int(unclear),
        **placement_metadata(context, CPU_LIGHT, policy.policy.placement),
    })


@dg.asset(
    group_name=SERVING_GROUP,
    partitions_def=BACKLOGS,
    kinds={"pandas"},
    owners=OWNERS,
    description=(
        "Part 2, retrieve (CPU profile): each backlog customer's recent payments and refunds "
        "from the retrieval store the online workflow reads; an unknown customer is named."
    ),
    **CPU_LIGHT.asset_kwargs(),
)
def backlog_retrieved(context: dg.AssetExecutionContext, support_backlog: dict,
                      policy: PolicyResource) -> dg.Output[dict]:
    from unified_assets.serving import backlog

    store = _store(support_backlog)
    customers = backlog.retrieve(store, [r["customer_id"] for r in support_backlog["requests"]],
                                 _rules(support_backlog).recent_transactions)
    unknown = sorted(cid for cid, c in customers.items() if c is None)
    known = [c for c in customers.values() if c is not None]
    return dg.Output({"version": store.version, "customers": customers}, metadata={
        "customer_store": store.version,
        "customers": dg.MetadataValue.int(len(customers)),
        "unknown_customers": dg.MetadataValue.int(len(unknown)),
        "unknown": listed([str(c) for c in unknown]),
        "payments": dg.MetadataValue.int(sum(len(c["transactions"]) for c in known)),
        "with_refund": dg.MetadataValue.int(sum(bool(c["refunds"]) for c in known)),
        **placement_metadata(context, CPU_LIGHT, policy.policy.placement),
    })


def _explain_placement(context: dg.AssetExecutionContext, rows: int, policy: PolicyResource):
    """Where the explanations run: the planner's decision for this step (GPU profile), made
    when it starts. A policy that says wait retries the step; one that refuses (no GPU and
    fail_and_escalate) is returned as the error, and the requests are escalated, as online."""
    from unified_assets.placement import PlacementError, StepRequirement, decide_at_start

    requirement = StepRequirement(str(context.op_handle), GPU_TRAINING, input_rows=rows,
                                  asset_key=context.asset_key.to_user_string())
    try:
        return decide_at_start(context.run.tags, requirement,
                               policy=policy.policy.placement), None
    except PlacementError as error:
        if error.retryable:
            raise dg.RetryRequested(max_retries=3, seconds_to_wait=60) from error
        return None, str(error)


@dg.asset(
    group_name=SERVING_GROUP,
    partitions_def=BACKLOGS,
    kinds={"pytorch"},
    owners=OWNERS,
    description=(
        "Part 3, explain (GPU profile): the fraud model's per-feature attributions for the "
        "payment each request asks about, in words, as the online explainer makes them. "
        "Placed by the planner when the step starts (the policy's gpu-training rule, which "
        "the online explainer follows too unless the policy gives serve-gpu its own): on "
        "CUDA when placed on a GPU, on CPU otherwise; metadata says where it ran and why."
    ),
    **GPU_TRAINING.asset_kwargs(),
)
def backlog_explained(context: dg.AssetExecutionContext, support_backlog: dict,
                      backlog_classified: dict, backlog_retrieved: dict,
                      policy: PolicyResource) -> dg.Output[dict]:
    from unified_assets.serving import backlog

    targets = backlog.explain_targets(support_backlog["requests"],
                                      backlog_classified["by_request"],
                                      backlog_retrieved["customers"])
    payments = len({p["transaction_id"] for p in targets.values()})
    if not targets:
        return dg.Output({"by_request": {}, "version": None, "device": None, "problem": None},
                         metadata={"requests_explained": dg.MetadataValue.int(0),
                                   "explain_where": "nothing to explain: no request asks "
                                   "about a declined or reported payment"})
    decision, problem = _explain_placement(context, payments, policy)
    if decision is None:
        context.log.warning(f"explainer refused by the placement policy: {problem}")
        return dg.Output({"by_request": {}, "version": None, "device": None, "problem": problem},
                         metadata={"requests_explained": dg.MetadataValue.int(0),
                                   "requests_escalated": dg.MetadataValue.int(len(targets)),
                                   "explain_where": f"not run: {problem}"})
    from unified_assets.placement import decision_metadata
    from unified_assets.serving.explain import device_for

    prefer_gpu = decision.target == "gpu"
    device = device_for(prefer_gpu)
    model = _fraud_model(support_backlog)
    result = backlog.explain(model, _store(support_backlog).frame, targets, prefer_gpu)
    failed = {rid: e for rid, e in result["by_request"].items() if "error" in e}
    why = f"placed on {decision.target} ({decision.fallback}): {decision.reason}"
    if prefer_gpu and device != "cuda":
        why += "; torch sees no CUDA device, so it ran on cpu"
    for rid, e in list(failed.items())[:PREVIEW]:
        context.log.warning(f"{rid}: no explanation for {e['transaction_id']}: {e['error']}")
    return dg.Output({**result, "problem": None}, metadata={
        "fraud_model_version": model.label,
        "requests_explained": dg.MetadataValue.int(len(targets) - len(failed)),
        "payments_explained": dg.MetadataValue.int(result["payments"]),
        "failed": dg.MetadataValue.int(len(failed)),
        "explain_device": result["device"] or device,
        "explain_method": result["method"] or "none",
        "explain_where": why,
        **decision_metadata(decision),
    })


@dg.asset(
    group_name=SERVING_GROUP,
    partitions_def=BACKLOGS,
    kinds={"mlflow"},
    owners=OWNERS,
    description=(
        "Part 4, fraud check (CPU profile): each backlog customer's recent payments scored by "
        "the champion fraud model, as the fraud service scores them online (in the step "
        "rather than over HTTP: a backlog has no latency budget, and a step that fails is "
        "retried as a step)."
    ),
    **CPU_LIGHT.asset_kwargs(),
)
def backlog_fraud_checked(context: dg.AssetExecutionContext, support_backlog: dict,
                          backlog_retrieved: dict, policy: PolicyResource) -> dg.Output[dict]:
    from unified_assets.serving import backlog

    customers = backlog_retrieved["customers"]
    if not any(c is not None for c in customers.values()):
        return dg.Output({"version": None, "by_customer": {}},
                         metadata={"payments_scored": dg.MetadataValue.int(0)})
    model = _fraud_model(support_backlog)
    scores = backlog.fraud_scores(model, customers)
    limit = _rules(support_backlog).escalate_risk
    flat = [s for by_tid in scores.values() for s in by_tid.values()]
    return dg.Output({"version": model.label, "by_customer": scores}, metadata={
        "fraud_model_version": model.label,
        "customers_scored": dg.MetadataValue.int(len(scores)),
        "payments_scored": dg.MetadataValue.int(len(flat)),
        "payments_at_or_above_escalate_risk": dg.MetadataValue.int(sum(s >= limit for s in flat)),
        **placement_metadata(context, CPU_LIGHT, policy.policy.placement),
    })


@dg.asset(
    group_name=SERVING_GROUP,
    partitions_def=BACKLOGS,
    kinds={"json"},
    owners=OWNERS,
    description=(
        "Part 5, decide (CPU profile): answer, retry or escalate for each backlog request, by "
        "the online workflow's rules (`decide.decide`); each escalation opens a case in the "
        "decision store as online (`unified-ai cases`; a re-run opens none twice), a refused "
        "line or unknown customer is a 4xx. The answers are written to "
        "`<home>/serving/backlog/answers/<partition>.jsonl`."
    ),
    **CPU_LIGHT.asset_kwargs(),
)
def backlog_decided(context: dg.AssetExecutionContext, support_backlog: dict,
                    backlog_classified: dict, backlog_retrieved: dict, backlog_explained: dict,
                    backlog_fraud_checked: dict, decisions: DecisionStore,
                    serving_target: ServingTarget, policy: PolicyResource) -> dg.Output[list]:
    from collections import Counter

    from unified_assets.serving import backlog
    from unified_assets.serving.cases import case_id_for, list_cases, open_request_case

    rules = _rules(support_backlog)
    versions = {"intent": backlog_classified["version"],
                "customer_store": backlog_retrieved["version"],
                "fraud": backlog_fraud_checked["version"],
                "explain_model": backlog_explained.get("version")}
    versions = {k: v for k, v in versions.items() if v is not None}
    customers = backlog_retrieved["customers"]
    explained = backlog_explained["by_request"]
    records = []
    for request in support_backlog["requests"]:
        rid = request["request_id"]
        records.append(backlog.decide_request(
            request, backlog_classified["by_request"][rid], customers.get(request["customer_id"]),
            backlog_fraud_checked["by_customer"].get(request["customer_id"]),
            backlog_fraud_checked["version"], explained.get(rid),
            backlog_explained.get("problem"), rules, versions))
    existing = {c.case_id: c for c in list_cases(decisions)}
    opened = kept = 0
    messages = {r["request_id"]: r["message"] for r in support_backlog["requests"]}
    for record in records:
        if record["outcome"] != backlog.ESCALATE:
            continue
        request_id = record["request_id"]
        asked = (record["customer_id"], messages[request_id])
        case_id = case_id_for(request_id)
        if case_id in existing and _asked(existing[case_id]) != asked:
            # A request id a person chose, already the case of another request (another
            # backlog's line): this escalation gets its own case, never someone else's.
            request_id = f"{request_id}@{support_backlog['partition']}"
            case_id = case_id_for(request_id)
        if case_id in existing and _asked(existing[case_id]) == asked:
            kept += 1  # this request was escalated by an earlier run
        else:
            case_id = open_request_case(
                decisions, request_id=request_id, customer_id=record["customer_id"],
                message=messages[record["request_id"]], intents=record["intents"],
                reason=record["reason"], draft_answer=record["answer"],
                model_versions=record["versions"],
                extra={"backlog": support_backlog["file"], "line": record["line"]})
            opened += 1
        record["case_id"] = case_id
    refused_lines = [{"request_id": None, "line": b["line"], "customer_id": b.get("customer_id"),
                      "outcome": backlog.REJECTED, "status": b["status"], "reason": b["error"],
                      "case_id": None} for b in support_backlog["refused"]]
    everything = sorted(records + refused_lines, key=lambda r: r["line"])
    answers = serving_target.answers_folder / f"{support_backlog['partition']}.jsonl"
    answers.parent.mkdir(parents=True, exist_ok=True)
    partial = answers.with_name(answers.name + ".partial")
    partial.write_text("".join(json.dumps(r, sort_keys=True, default=str) + "\n"
                               for r in everything))
    partial.replace(answers)
    outcomes = Counter(r["outcome"] for r in everything)
    decided = sum(outcomes[o] for o in ("answer", "retry", "escalate"))
    rate = outcomes["escalate"] / decided if decided else None
    seen = sorted({f"{k}: {v}" for r in records for k, v in r["versions"].items()})
    counted = (f"{len(everything)} line(s): " + ", ".join(
        f"{n} {o}" for o, n in sorted(outcomes.items())) if everything
        else f"{Path(support_backlog['file']).name}: no requests (no line to decide)")
    summary = counted + f"; {opened} case(s) opened" + (f", {kept} already open" if kept else "")
    return dg.Output(everything, metadata={
        "summary": summary,
        "lines": dg.MetadataValue.int(len(everything)),
        "requests": dg.MetadataValue.int(len(records)),
        **_counts({o: outcomes.get(o, 0) for o in ("answer", "retry", "escalate", "rejected")},
                  "outcome_"),
        **numbers({"escalation_rate": rate}),
        "cases_opened": dg.MetadataValue.int(opened),
        "cases_already_open": dg.MetadataValue.int(kept),
        "model_versions": listed(seen),
        "answers_file": dg.MetadataValue.path(str(answers)),
        "decisions": markdown_table(everything[:PREVIEW], [
            "line", "customer_id", "intent", "outcome", "status", "reason", "case_id"]),
        **placement_metadata(context, CPU_LIGHT, policy.policy.placement),
    })


BACKLOG_ASSETS = [support_backlog, backlog_classified, backlog_retrieved, backlog_explained,
                  backlog_fraud_checked, backlog_decided]

support_backlog_job = dg.define_asset_job(
    "run_support_backlog", selection=BACKLOG_ASSETS, partitions_def=BACKLOGS, tags=MANUAL,
    description="Decide one backlog of support requests (a partition: a file in "
    "<home>/serving/backlog/) through the five parts of the support workflow.")


def build_backlog_sensor(job: Any = support_backlog_job) -> dg.SensorDefinition:
    @dg.sensor(
        name="support_backlog_sensor",
        job=job,
        minimum_interval_seconds=30,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="Each new backlog file in <home>/serving/backlog/ (`NAME.jsonl`, one "
        "`POST /support` body a line; write it as `NAME.jsonl.partial` and rename it, or copy "
        "it in whole) becomes a partition of `support_backlog`, and a run decides it; a file "
        "replaced or edited is decided again.",
    )
    def support_backlog_sensor(context: dg.SensorEvaluationContext,
                               serving_target: ServingTarget):
        from unified_assets.serving.backlog import backlog_files

        folder = serving_target.backlog_folder
        files = backlog_files(folder)
        cursor = json.loads(context.cursor) if context.cursor else {}
        new = {key: f for key, f in files.items() if cursor.get(key) != f.version}
        if not new:
            return dg.SkipReason(f"no new backlog in {folder} ({len(files)} file(s) decided; "
                                 "drop NAME.jsonl there, one request a line)")
        known = set(context.instance.get_dynamic_partitions(BACKLOGS.name))
        added = sorted(key for key in new if key not in known)
        requests = [dg.RunRequest(partition_key=key, run_key=f"backlog:{key}:{f.version}",
                                  tags=started_because("new-backlog", f"{f.name} in {folder}"))
                    for key, f in sorted(new.items())]
        return dg.SensorResult(
            run_requests=requests,
            dynamic_partitions_requests=[BACKLOGS.build_add_request(added)] if added else [],
            cursor=json.dumps({**cursor, **{k: f.version for k, f in new.items()}},
                              sort_keys=True))

    return support_backlog_sensor


# request_audit ----------------------------------------------------------------------------


@dg.asset(
    group_name=SERVING_GROUP,
    partitions_def=AUDIT_DAYS,
    kinds={"json"},
    owners=OWNERS,
    description=(
        "One UTC day of live support requests from the request audit "
        "(`<home>/serving/audit.jsonl`): requests, outcomes (answer, escalate, retry, "
        "rejected 4xx, error), HTTP statuses, the escalation rate (escalated / decided), "
        "fallbacks per part, latency p50/p95/p99 and the model versions seen. A line that is "
        "not a record is counted and named (file and line). Yesterday is summarized at 00:15 "
        "UTC by `request_audit_daily`; today's partition reads the day so far."
    ),
    **CPU_LIGHT.asset_kwargs(),
)
def request_audit(context: dg.AssetExecutionContext,
                  serving_target: ServingTarget) -> dg.MaterializeResult:
    from unified_assets.serving.audit import summarize
    from unified_assets.serving.profiles import PARTS

    window = context.partition_time_window
    start, end = window.start.astimezone(UTC), window.end.astimezone(UTC)
    day = start.date().isoformat()
    path = serving_target.audit_path
    found = summarize(path, start, end)
    bad, untimed = found["bad_lines"], found["untimed"]
    for line in bad[:PREVIEW]:
        context.log.warning(f"malformed audit line {line}")
    requests, outcomes = found["requests"], found["outcomes"]
    if not path.exists():
        summary = f"{day}: no requests (no audit at {path}: nothing was served on this host)"
    elif not requests:
        summary = f"{day}: no requests in {path}"
    else:
        rate = found["escalation_rate"]
        latency = found["latency"]
        summary = (f"{day}: {requests} request(s): " + ", ".join(
            f"{n} {o}" for o, n in outcomes.items())
            + (f"; escalation rate {rate:.1%} of {found['decided']} decided" if rate is not None
               else "")
            + (f"; p50 {latency['p50_latency_ms']} ms, p99 {latency['p99_latency_ms']} ms"
               if latency else "")
            + f"; {found['requests_with_fallback']} with a fallback")
    if bad:
        summary += f"; {len(bad)} malformed line(s) in the audit"
    complete = end <= datetime.now(UTC)
    fallback_parts = {part: found["fallbacks_per_part"].get(part, 0)
                      for part in PARTS if part != "ingress"}
    metadata: dict[str, Any] = {
        "summary": summary,
        "day": day,
        "day_complete": complete,
        "audit_file": dg.MetadataValue.path(str(path)),
        "requests": dg.MetadataValue.int(requests),
        "decided": dg.MetadataValue.int(found["decided"]),
        **_counts({o: outcomes.get(o, 0) for o in
                   ("answer", "escalate", "retry", "shed", "rejected", "error")}, "outcome_"),
        "outcomes": markdown_table([{"outcome": o, "requests": n} for o, n in outcomes.items()],
                                   ["outcome", "requests"]),
        "statuses": markdown_table([{"status": s, "requests": n}
                                    for s, n in found["statuses"].items()], ["status", "requests"]),
        **numbers({"escalation_rate": found["escalation_rate"]}),
        **numbers({k: found["latency"].get(k) for k in
                   ("p50_latency_ms", "p95_latency_ms", "p99_latency_ms")}),
        "requests_with_fallback": dg.MetadataValue.int(found["requests_with_fallback"]),
        **_counts(fallback_parts, "fallback_"),
        "fallbacks": markdown_table(found["fallbacks"], ["part", "fallback", "requests"]),
        "model_versions": markdown_table(found["versions"], ["model", "version", "requests"]),
        "escalation_reasons": markdown_table(found["escalation_reasons"], ["reason", "requests"]),
        "malformed_lines": dg.MetadataValue.int(len(bad)),
        "malformed": listed([str(b) for b in bad], limit=PREVIEW),
        "records_without_time": dg.MetadataValue.int(len(untimed)),
    }
    if untimed:
        metadata["without_time"] = listed(untimed, limit=PREVIEW)
    context.log.info(summary)
    return dg.MaterializeResult(metadata=metadata)


request_audit_job = dg.define_asset_job(
    "summarize_request_audit", selection=[request_audit], partitions_def=AUDIT_DAYS,
    tags=MANUAL, description="Summarize one day of the request audit (a partition).")


@dg.schedule(
    name="request_audit_daily",
    cron_schedule="15 0 * * *",
    execution_timezone="UTC",
    job=request_audit_job,
    default_status=dg.DefaultScheduleStatus.RUNNING,
    tags=started_because("schedule"),
    description="At 00:15 UTC, summarizes yesterday's requests (`request_audit`).",
)
def request_audit_daily(context: dg.ScheduleEvaluationContext) -> dg.RunRequest:
    scheduled = context.scheduled_execution_time or datetime.now(UTC)
    day = (scheduled.astimezone(UTC) - timedelta(days=1)).date().isoformat()
    return dg.RunRequest(run_key=f"request_audit:{day}", partition_key=day,
                         tags=started_because("schedule", f"the request audit of {day}"))
