"""Deployment group: the approval decision (as data) and the production model (the version
holding the MLflow `champion` alias), promoted or rolled back through one ledger."""

from collections.abc import Iterator
from typing import Literal

import dagster as dg
from pydantic import Field

from resources.decision_store import DecisionStore
from resources.mlflow_registry import CHAMPION_ALIAS, MlflowRegistry
from resources.policy import PolicyResource
from unified_assets.assets.evaluation import cited_report
from unified_assets.assets.live import latest_live_record
from unified_assets.compute import CPU_LIGHT
from unified_assets.metadata import OWNERS, markdown_table, placement_metadata
from unified_assets.run_tags import SOURCE_TAG
from unified_assets.services.champion import ChampionError, ChampionLedger, LedgerFault
from unified_assets.services.promotion import (
    DecisionForm,
    promote_approved,
    settle_approval,
    take_decision,
)
from unified_assets.services.refusals import Refused, refused
from unified_assets.services.rollback import (
    Evidence,
    RollbackRequest,
    request_rollback,
)
from unified_assets.serving.follow import follow_champion
from unified_assets.serving.follow import observation as serving_observation
from unified_assets.values import ApprovalRecord, ChallengerChoice

APPROVED_CHECK = "approved"
# ARCHITECTURE.md 5: a failed blocking check upstream never promotes, in this run or in
# any later automation tick. Approval carries the same guard, so a failed challenger is
# not even put up for approval by automation.
GATED_CONDITION = (
    dg.AutomationCondition.eager() & dg.AutomationCondition.all_deps_blocking_checks_passed()
)


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
    challenger: ChallengerChoice,
    decisions: DecisionStore,
    mlflow_registry: MlflowRegistry,
    policy: PolicyResource,
):
    model_name, version = challenger.model_name, challenger.version
    form = DecisionForm(config.decision, config.version, config.approver, config.reason,
                        config.token)
    if not form.empty:
        try:
            take_decision(decisions, mlflow_registry, policy.policy, model_name, version, form,
                          source=_source(context))
        except Refused as why:
            raise refused(str(why)) from None
    outcome = settle_approval(decisions, mlflow_registry, policy.policy, challenger)
    state_name, described, waiting = outcome.state, outcome.described, outcome.waiting
    yield dg.Output(outcome.record, metadata={
        **placement_metadata(context, CPU_LIGHT, policy.policy.placement),
        "version": dg.MetadataValue.text(version),
        "state": dg.MetadataValue.text(state_name),
        "decision": dg.MetadataValue.text(described),
        "requested_because": dg.MetadataValue.text(outcome.requested_because),
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
    approved = outcome.approved
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


APPROVAL_INPUT = "approval_if_any"


@dg.input_manager(required_resource_keys={"io_manager"})
def approval_if_any(context: dg.InputContext) -> ApprovalRecord | None:
    """The stored approval, or None when none was ever stored: a rollback launched before
    anything was approved is then refused with its reason instead of failing to load an
    input. Read from the IO manager's storage itself (a local file, or an S3 object)."""
    try:
        stored = context.resources.io_manager.load_input(context)
        if not isinstance(stored, ApprovalRecord):
            raise dg.Failure(
                f"the stored approval is a {type(stored).__name__}, written by an older "
                "unified-ai: materialize `approval` again (or start from a fresh "
                "UNIFIED_AI_HOME) before promoting or rolling back")
        return stored
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
        "its run with the reason, a fault also files an incident. Once `serving` is deployed, "
        "live traffic follows each change in the same run (the fraud model swapped in place in "
        "the running Serve deployments); a run that cannot move it fails, saying so."
    ),
    output_required=False,
    automation_condition=GATED_CONDITION,
    **CPU_LIGHT.asset_kwargs(),
)
def production_model(
    context: dg.AssetExecutionContext,
    config: ProductionConfig,
    approval: ApprovalRecord | None,
    decisions: DecisionStore,
    mlflow_registry: MlflowRegistry,
    policy: PolicyResource,
) -> Iterator[dg.Output[dict]]:
    ledger = ChampionLedger(decisions, mlflow_registry)
    if approval is None:  # nothing was ever approved: nothing to promote or roll back
        if config.action == "promote":
            context.log.info("promotion waits: no approval has been recorded yet")
            return
        raise refused("rollback refused: there is no champion yet (nothing was ever approved)")
    model_name = approval.model_name
    if config.action == "promote" and not approval.approved:
        # A hold, not a failure: no output, so nothing is materialized and the run is green.
        context.log.info(f"promotion waits: v{approval.version} {approval.approval}")
        return
    try:
        if config.action == "rollback":
            request = RollbackRequest(by=config.by, reason=config.reason,
                                      rollback_to=config.rollback_to,
                                      expected_from=config.expected_from, token=config.token,
                                      source=_source(context))
            record = request_rollback(decisions, ledger, policy.policy, model_name, request,
                                      _evidence(context.instance, mlflow_registry, model_name))
        else:
            record = promote_approved(ledger, approval, context.run_id)
    except LedgerFault as fault:
        raise dg.Failure(str(fault)) from None  # a fault: the failure sensor files an incident
    except (Refused, ChampionError) as why:
        raise refused(str(why)) from None
    champion = mlflow_registry.alias_version(model_name, CHAMPION_ALIAS)
    history = decisions.changes(model_name)
    # Live traffic follows in this run: a rollback reverts what requests get in one step.
    followed = follow_champion(context.instance, model_name, str(champion))
    if followed.status == "updated":
        context.log_event(serving_observation(model_name, str(champion), followed, context.run_id))
    yield dg.Output(record, metadata={
        "serving": dg.MetadataValue.text(followed.message),
        **placement_metadata(context, CPU_LIGHT, policy.policy.placement),
        "champion_version": dg.MetadataValue.text(str(champion)),
        "action": dg.MetadataValue.text(record["action"]),
        "previous_champion": dg.MetadataValue.text(str(record.get("from_version") or "none")),
        "message": dg.MetadataValue.text(record["message"]),
        **({"incident": dg.MetadataValue.text(str(record["incident_id"]))}
           if record.get("incident_id") else {}),
        "history": markdown_table(
            [{"seq": c["seq"], "action": c["action"], "from": c["from_version"],
              "to": c["to_version"], "by": c["actor"], "reason": c["reason"]}
             for c in history[-10:]],
            ["seq", "action", "from", "to", "by", "reason"],
        ),
    })
    if followed.status == "failed":  # recorded above; the run says live traffic did not move
        raise dg.Failure(
            description=f"{model_name}'s champion is v{champion} (recorded), but {followed.message}"
                        ". The sensor serving_follows_champion redeploys it; the job "
                        "deploy_serving does it now.",
            metadata={"serving": dg.MetadataValue.text(followed.message)})


def _evidence(instance: dg.DagsterInstance, registry: MlflowRegistry,
              model_name: str) -> Evidence:
    """The incident's evidence of a version: its evaluation report (as its evaluation cited
    it) and latest live record, both from Dagster's records."""

    def report_uri(version: str) -> str | None:
        try:
            family = registry.version_tags(model_name, version).get("family")
        except Exception:  # noqa: BLE001 - a version gone from the registry: no report to cite
            return None
        return cited_report(instance, family, version)

    def live_record(version: str) -> dict | None:
        return latest_live_record(instance, version)

    return Evidence(report_uri=report_uri, live_record=live_record)
