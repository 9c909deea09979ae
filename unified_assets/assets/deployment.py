"""Deployment group: the approval decision (as data) and the production model (the version
holding the MLflow `champion` alias), promoted or rolled back through one ledger."""

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Literal

import dagster as dg
from pydantic import Field

from resources.artifact_store import ArtifactStore
from resources.decision_store import DecisionStore
from resources.mlflow_registry import CHAMPION_ALIAS, MlflowRegistry
from resources.policy import PolicyResource
from unified_assets.services.approvals import (
    POLICY_ACTOR,
    REFUSED_MARKER,
    ApprovalRefused,
    approval_state,
    awaiting_decision,
    human_reasons,
)
from unified_assets.assets.evaluation import report_key
from unified_assets.services.champion import ChampionError, ChampionLedger, LedgerFault
from unified_assets.compute import CPU_LIGHT
from unified_assets.services.decisions import (
    APPROVAL_FIELDS,
    REFUSAL,
    ROLLBACK,
    ROLLBACK_FIELDS,
    authorize_rollback,
    decision_problem,
    fill_from_token,
    record_decision,
)
from unified_assets.metadata import OWNERS, markdown_table, placement_metadata

APPROVED_CHECK = "approved"
SOURCE_TAG = "unified-ai/source"  # cli | sensor:live-performance; absent: launched in the UI
# ARCHITECTURE.md 5: a failed blocking check upstream never promotes, in this run or in
# any later automation tick. Approval carries the same guard, so a failed challenger is
# not even put up for approval by automation.
GATED_CONDITION = (
    dg.AutomationCondition.eager() & dg.AutomationCondition.all_deps_blocking_checks_passed()
)


def refused(reason: str) -> dg.Failure:
    """The run of a request we refused fails with this one line and no stack of ours; the
    marker tells `run_failure_incidents` that nothing is broken (no incident)."""
    return dg.Failure(description=reason.strip().splitlines()[0] if reason.strip() else "refused",
                      metadata={REFUSED_MARKER: True}, allow_retries=False)


class ApprovalConfig(dg.Config):
    """What a person fills in to decide; also the whole launchpad of `approve_or_reject`."""

    decision: Literal["none", "approve", "reject"] = Field(
        default="none", description="none: only (re)evaluate; approve/reject: record a decision "
        "(with a token: taken from it)."
    )
    version: str = Field(default="", description="The model version decided on.")
    approver: str = Field(default="", description="Who decides; must be allowed by the policy.")
    reason: str = Field(default="", description="Why; kept with the decision.")
    token: str = Field(default="", description="The signed decision `unified-ai sign approve|"
                       "reject VERSION --by NAME --reason ...` prints; the fields above may then "
                       "stay empty. Required when the policy requires signatures.")


@dg.config_mapping
def approval_launchpad(config: ApprovalConfig) -> dict:
    """`approve_or_reject`'s launchpad is the decision alone: resources keep their deployed
    values and production_model its default (promote), so nobody edits sqlite URLs there."""
    return {"ops": {"approval": {"config": config.model_dump()}}}


@dg.asset(
    ins={"challenger": dg.AssetIn()},
    group_name="deployment",
    kinds={"sqlite"},
    owners=OWNERS,
    description=(
        "The approval decision for the challenger, as data in the append-only decision store. "
        "The policy approves automatically (and records that it did) unless a rule wants a "
        "person; then a request waits for a decision from the UI (launch `approve_or_reject`) "
        "or the CLI; metadata lists every version awaiting a decision. Its blocking check "
        "passes only when approved: otherwise it warns (waiting, rejected, not verifiable), "
        "production_model promotes nothing, and automation does not request it."
    ),
    check_specs=[dg.AssetCheckSpec(
        APPROVED_CHECK, asset="approval", blocking=True,
        description="The challenger is approved for production. Until it is (waiting for a "
        "person, rejected) it fails as a warning: the run stays green, production_model "
        "promotes nothing and automation never requests it.")],
    automation_condition=GATED_CONDITION,
    **CPU_LIGHT.asset_kwargs(),
)
def approval(
    context: dg.AssetExecutionContext,
    config: ApprovalConfig,
    challenger: dict,
    decisions: DecisionStore,
    mlflow_registry: MlflowRegistry,
    policy: PolicyResource,
):
    model_name, version = challenger["model_name"], challenger["version"]
    if version is None:  # stored before holds stopped materializing the challenger
        raise refused(f"no challenger to approve: {challenger['reason']}")
    if config.decision != "none" or config.token:
        typed = {"decision": config.decision, "version": config.version,
                 "approver": config.approver, "reason": config.reason}
        given = fill_from_token(config.token, typed, APPROVAL_FIELDS) if config.token else typed
        if given["version"] != version:
            raise refused(f"config names v{given['version'] or '?'} but the challenger is "
                          f"v{version}; decide on the current challenger")
        try:
            record_decision(decisions, mlflow_registry, policy.policy, model_name, version,
                            given["decision"], given["approver"], given["reason"],
                            source=_source(context), token=config.token or None)
        except ApprovalRefused as why:
            raise refused(f"decision refused and recorded: {why}") from None
    now = datetime.now(UTC)
    state = approval_state(decisions.events(model_name, version), version, now)
    reasons: list[str] = []
    if state.state in ("none", "expired"):
        champion = challenger.get("champion")
        family = (mlflow_registry.version_tags(model_name, champion["version"]).get("family")
                  if champion else None)
        reasons = human_reasons(challenger, family, policy.policy.approval,
                                policy.policy.promotion)
        if reasons:
            ttl = timedelta(hours=policy.policy.approval.request_ttl_hours)
            decisions.append_event(model_name=model_name, version=version, kind="request",
                                   actor=POLICY_ACTOR, reason="; ".join(reasons),
                                   expires_at=now + ttl,
                                   details={"report_uri": challenger["report_uri"]})
        else:
            decisions.append_event(model_name=model_name, version=version, kind="decision",
                                   decision="approve", actor=POLICY_ACTOR,
                                   reason="approved automatically: no policy rule needs a human",
                                   details={"source": "policy"})
        state = approval_state(decisions.events(model_name, version), version, now)
    # A decision is checked again when acted on: the policy may have dropped the approver,
    # rotated the key or started requiring signatures since it was taken.
    problem = decision_problem(state.decision, model_name, policy.policy) \
        if state.state == "approved" else None
    state_name = "unverified" if problem else state.state
    described = f"{state.describe()}; not acted on: {problem}" if problem else state.describe()
    record = {**challenger, "approval_state": state_name, "approval": described,
              "approved_by": state.decision["actor"] if state.decision and not problem else None}
    waiting = awaiting_decision(decisions.events(model_name), now)
    yield dg.Output(record, metadata={
        **placement_metadata(context, CPU_LIGHT, policy.policy.placement),
        "version": dg.MetadataValue.text(version),
        "state": dg.MetadataValue.text(state_name),
        "decision": dg.MetadataValue.text(described),
        "requested_because": dg.MetadataValue.text(
            state.request["reason"] if state.request else "-"),
        "awaiting_decision": dg.MetadataValue.text(
            ", ".join(f"v{w['version']}" for w in waiting) or "none"),
        "awaiting_decision_detail": markdown_table(
            [{"version": f"v{w['version']}", "because": w["because"],
              "expires": f"{w['expires_at']:%Y-%m-%d %H:%M}" if w["expires_at"] else "-"}
             for w in waiting],
            ["version", "because", "expires"]),
    })
    # Not approved (yet) is an outcome, not an error: a warning, so the run stays green; the
    # check is still blocking, so automation never requests production_model after it.
    approved = state_name == "approved"
    yield dg.AssetCheckResult(
        check_name=APPROVED_CHECK, passed=approved,
        severity=dg.AssetCheckSeverity.ERROR if approved else dg.AssetCheckSeverity.WARN,
        description=described,
        metadata={"state": dg.MetadataValue.text(state_name),
                  "decision": dg.MetadataValue.text(described)},
    )


def _source(context: dg.AssetExecutionContext) -> str:
    """Where a decision came from, for the record (informational: a tag anyone can set)."""
    return context.run.tags.get(SOURCE_TAG, "ui")


class ProductionConfig(dg.Config):
    action: Literal["promote", "rollback"] = Field(
        default="promote", description="rollback: move `champion` back (see rollback_to)."
    )
    rollback_to: str = Field(default="", description="Version to roll back to; empty: the "
                             "most recent earlier champion never rolled back from.")
    by: str = Field(default="", description="Who asks for the rollback (listed in the "
                    "policy's rollback.by).")
    expected_from: str = Field(default="", description="Refuse unless this version is the "
                               "champion (set by automated rollbacks; empty: no guard).")
    reason: str = Field(default="", description="Why; kept in the incident record.")
    token: str = Field(default="", description="The signed rollback `unified-ai sign rollback "
                       "[--to VERSION] --by NAME --reason ...` prints; by, reason and rollback_to "
                       "may then stay empty. Required when the policy requires signatures.")


_TEXT = dict(config=str, default_value="")
ROLLBACK_LAUNCHPAD = {"ops": {"production_model": {"config": {
    "rollback_to": dg.Field(**_TEXT, description=ProductionConfig.model_fields["rollback_to"]
                            .description),
    "by": dg.Field(**_TEXT, description=ProductionConfig.model_fields["by"].description),
    "reason": dg.Field(**_TEXT, description=ProductionConfig.model_fields["reason"].description),
    "token": dg.Field(**_TEXT, description=ProductionConfig.model_fields["token"].description),
    # Accepted (automated rollbacks and the CLI send them), never pre-filled for a person.
    "expected_from": dg.Field(str, is_required=False, description=ProductionConfig
                              .model_fields["expected_from"].description),
    "action": dg.Field(dg.Enum("RollbackAction", [dg.EnumValue("rollback")]),
                       is_required=False, description="Always rollback in this job."),
}}}}


@dg.config_mapping(config_schema=ROLLBACK_LAUNCHPAD)
def rollback_launchpad(config: dict) -> dict:
    """`rollback_production`'s launchpad: who, why, to what (or the signed token), in the same
    shape the CLI and the live sensor send; resources keep their deployed values."""
    given = config.get("ops", {}).get("production_model", {}).get("config", {})
    return {"ops": {"production_model": {"config": {
        **{k: v for k, v in given.items() if k != "action"}, "action": "rollback"}}}}


def rollback_production(ledger: ChampionLedger, store: ArtifactStore, model_name: str,
                        by: str, reason: str, to_version: str | None = None,
                        expected_from: str | None = None, allow_any_approved: bool = False,
                        details: dict | None = None) -> dict:
    """Move `champion` back in one registry call and record an incident with both reports.
    Who may ask is checked before (`unified_assets.decisions.authorize_rollback`)."""
    if not by.strip() or not reason.strip():
        raise ChampionError("a rollback needs --by and --reason")
    outcome = ledger.rollback(model_name, actor=by, reason=reason, to_version=to_version,
                              expected_from=expected_from, allow_any_approved=allow_any_approved,
                              details=details)
    if outcome.action == "none":
        return {"action": "none", "message": outcome.message, "champion": outcome.to_version}
    reports = {}
    for side, version in (("from", outcome.from_version), ("to", outcome.to_version)):
        key = report_key(model_name, version) if version else None
        reports[side] = store.uri(key) if key and store.exists(key) else None
    live_key = f"live/{model_name}/v{outcome.from_version}.json"  # its latest live verdict
    incident = ledger.store.record_incident(
        kind="rollback", model_name=model_name, actor=by, reason=reason,
        details={"from_version": outcome.from_version, "to_version": outcome.to_version,
                 "evaluation_reports": reports, "authorization": details or {},
                 "live_metrics": store.read_json(live_key) if store.exists(live_key) else None},
    )
    return {"action": "rollback", "message": outcome.message, "champion": outcome.to_version,
            "from_version": outcome.from_version, "incident_id": incident,
            "evaluation_reports": reports}


APPROVAL_INPUT = "approval_if_any"


@dg.input_manager(required_resource_keys={"io_manager"})
def approval_if_any(context: dg.InputContext) -> dict | None:
    """The stored approval, or None when none was ever stored: a rollback launched before
    anything was approved is then refused with its reason instead of failing to load an
    input. Read from the IO manager's storage itself (a local file, or an S3 object)."""
    try:
        return context.resources.io_manager.load_input(context)
    except FileNotFoundError:
        return None
    except Exception as error:  # S3: botocore's ClientError with code NoSuchKey
        code = getattr(error, "response", {}).get("Error", {}).get("Code")
        if code in ("NoSuchKey", "404"):
            return None
        raise


@dg.asset(
    ins={"approval": dg.AssetIn(input_manager_key=APPROVAL_INPUT)},
    group_name="deployment",
    kinds={"mlflow"},
    owners=OWNERS,
    description=(
        "The production model: the version holding the MLflow `champion` alias. Promotion "
        "moves it to the approved challenger; a rollback (launch with action: rollback, or "
        "`unified-ai rollback`) moves it back. Every change is recorded with the previous "
        "champion, the evaluation and the data; nothing is deleted. When the approval is not "
        "(yet) given, it promotes nothing and is not materialized; a refused request fails "
        "its run with the reason, a fault also files an incident."
    ),
    output_required=False,
    automation_condition=GATED_CONDITION,
    **CPU_LIGHT.asset_kwargs(),
)
def production_model(
    context: dg.AssetExecutionContext,
    config: ProductionConfig,
    approval: dict | None,
    decisions: DecisionStore,
    mlflow_registry: MlflowRegistry,
    store: ArtifactStore,
    policy: PolicyResource,
) -> Iterator[dg.Output[dict]]:
    ledger = ChampionLedger(decisions, mlflow_registry)
    if approval is None:  # nothing was ever approved: nothing to promote or roll back
        if config.action == "promote":
            context.log.info("promotion waits: no approval has been recorded yet")
            return
        raise refused("rollback refused: there is no champion yet (nothing was ever approved)")
    model_name = approval["model_name"]
    if config.action == "promote" and approval["approval_state"] != "approved":
        # A hold, not a failure: no output, so nothing is materialized and the run is green.
        context.log.info(f"promotion waits: v{approval['version']} {approval['approval']}")
        return
    try:
        if config.action == "rollback":
            typed = {"rollback_to": config.rollback_to, "by": config.by, "reason": config.reason}
            given = fill_from_token(config.token, typed, ROLLBACK_FIELDS) if config.token else typed
            try:
                identity = authorize_rollback(
                    decisions, policy.policy, model=model_name, by=given["by"],
                    reason=given["reason"], to_version=given["rollback_to"] or None,
                    expected_from=config.expected_from or None, token=config.token or None,
                    source=_source(context))
            except ApprovalRefused as why:
                raise refused(f"rollback refused and recorded: {why}") from None
            result = rollback_production(
                ledger, store, model_name, given["by"], given["reason"],
                given["rollback_to"] or None, config.expected_from or None,
                allow_any_approved=policy.policy.rollback.to_any_approved_version,
                details={k: v for k, v in identity.items() if k != "token"})
            record = {"model_name": model_name, **result}
        else:
            compared_with = approval.get("champion")
            outcome = ledger.promote(
                model_name, approval["version"], actor=approval["approved_by"] or POLICY_ACTOR,
                reason=f"passed every gate; {approval['approval']}",
                details={"evaluation_report": approval["report_uri"],
                         "training_batches": approval["training_batches"],
                         "dagster_run_id": context.run_id},
                evaluated_against=compared_with["version"] if compared_with else None,
            )
            record = {"model_name": model_name, "action": outcome.action,
                      "message": outcome.message, "champion": outcome.to_version,
                      "from_version": outcome.from_version,
                      "evaluation_report": approval["report_uri"],
                      "training_batches": approval["training_batches"]}
    except LedgerFault as fault:
        raise dg.Failure(str(fault)) from None  # a fault: the failure sensor files an incident
    except ChampionError as error:
        if config.action == "rollback":
            # The request was authorized (recorded above); what the ledger refused is recorded
            # beside it, so the log never shows an authorized rollback as if it happened.
            decisions.append_event(model_name=model_name, version=given["rollback_to"] or "",
                                   kind=REFUSAL, decision=ROLLBACK, actor=given["by"],
                                   reason=f"refused by the ledger: {error}",
                                   details={"source": _source(context)})
        raise refused(str(error)) from None
    champion = mlflow_registry.alias_version(model_name, CHAMPION_ALIAS)
    history = decisions.changes(model_name)
    yield dg.Output(record, metadata={
        **placement_metadata(context, CPU_LIGHT, policy.policy.placement),
        "champion_version": dg.MetadataValue.text(str(champion)),
        "action": dg.MetadataValue.text(record["action"]),
        "previous_champion": dg.MetadataValue.text(str(record.get("from_version") or "none")),
        "message": dg.MetadataValue.text(record["message"]),
        "history": markdown_table(
            [{"seq": c["seq"], "action": c["action"], "from": c["from_version"],
              "to": c["to_version"], "by": c["actor"], "reason": c["reason"]}
             for c in history[-10:]],
            ["seq", "action", "from", "to", "by", "reason"],
        ),
    })
