"""Decisions carry verified identity: approvals, rejections and rollbacks are accepted from
people the policy lists, signed with their key when the policy says so (the default), each
token once; the live-performance sensor's name cannot be borrowed. Every refusal is recorded.

Unit tests on a real (sqlite) decision store; the registry is only asked whether a version
exists."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest

from resources.decision_store import DecisionStore
from tests.policies import overlay, shipped_policy
from unified_assets.policy import parse_policy
from unified_assets.services.approvals import ApprovalRefused
from unified_assets.services.decisions import (
    LIVE_ACTOR,
    authorize_rollback,
    decision_problem,
    fill_from_token,
    mint_automation_token,
    record_decision,
)
from unified_assets.services.identity import load_private_key, sign, write_key_pair

MODEL = "payments-risk"
PEOPLE = ("alice", "bob", "risk-officer", "ops", "mallory")


@dataclass
class Registry:
    versions: tuple[str, ...] = ("1", "2", "3")

    def version_exists(self, model_name: str, version: str) -> bool:
        return version in self.versions


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    folder = tmp_path_factory.mktemp("keys")
    pairs = {name: write_key_pair(name, folder) for name in PEOPLE}
    return ({name: load_private_key(path) for name, (path, _) in pairs.items()},
            {name: public for name, (_, public) in pairs.items()})


def _policy(keys, **approval):
    public = {k: v for k, v in keys[1].items() if k != "mallory"}
    return parse_policy(overlay(shipped_policy(), {"approval": {
        "keys": public, "require_signature": True, **approval}}))


@pytest.fixture
def store(tmp_path):
    store = DecisionStore(url=f"sqlite:///{tmp_path / 'decisions.db'}")
    store.append_event(model_name=MODEL, version="2", kind="request", actor="policy",
                       reason="first deployment", expires_at=datetime.now(UTC) + timedelta(hours=1))
    return store


def _sign(keys, signer, **fields):
    decision = dict(action="approve", model=MODEL, version="2", actor=signer, reason="reviewed")
    return sign(keys[0][signer], **(decision | fields))


def _refusals(store):
    return [e for e in store.events(MODEL) if e["kind"] == "refusal"]


@pytest.mark.parametrize("require_signature", [True, False])
def test_a_group_is_never_an_identity_anywhere(store, keys, require_signature):
    policy = _policy(keys, require_signature=require_signature)
    with pytest.raises(ApprovalRefused, match="'group:ml-leads' is a group, not a person"):
        record_decision(store, Registry(), policy, MODEL, "2", "approve", "group:ml-leads",
                        "the leads agree", "cli")
    with pytest.raises(ApprovalRefused, match="is a group, not a person"):
        authorize_rollback(store, policy, model=MODEL, by="group:ml-leads", reason="bad",
                           to_version=None, expected_from=None, token=None, source="cli")
    assert [r["actor"] for r in _refusals(store)] == ["group:ml-leads"] * 2
    # Each refusal is an incident too, where people look for them (`incidents --kind refusal`).
    assert [(i["actor"], i["reason"].split(":")[0]) for i in store.incidents("refusal")] == [
        ("group:ml-leads", "approve refused"), ("group:ml-leads", "rollback refused")]


def test_an_unsigned_decision_is_refused_and_recorded_when_signatures_are_required(store, keys):
    with pytest.raises(ApprovalRefused, match="not signed and the policy requires signatures"):
        record_decision(store, Registry(), _policy(keys), MODEL, "2", "approve", "alice",
                        "reviewed", "ui")
    (refusal,) = _refusals(store)
    assert refusal["actor"] == "alice" and refusal["details"]["source"] == "ui"
    assert not [e for e in store.events(MODEL) if e["kind"] == "decision"]


def test_a_signed_decision_is_recorded_with_its_token_and_used_once(store, keys):
    policy = _policy(keys)
    token = _sign(keys, "alice")
    recorded = record_decision(store, Registry(), policy, MODEL, "2", "approve", "alice",
                               "reviewed", "cli", token=token)
    assert recorded["signed"] is True
    (decision,) = [e for e in store.events(MODEL) if e["kind"] == "decision"]
    assert decision["details"]["token"] == token
    assert decision["details"]["key"] == keys[1]["alice"]
    assert decision_problem(decision, MODEL, policy) is None
    with pytest.raises(ApprovalRefused, match="already used"):
        record_decision(store, Registry(), policy, MODEL, "2", "approve", "alice", "reviewed",
                        "cli", token=token)


@pytest.mark.parametrize("fields, typed, match", [
    ({"version": "3"}, {}, "signed for version '3', not '2'"),
    ({"action": "reject"}, {}, "signed for action 'reject', not 'approve'"),
    ({}, {"reason": "something else"}, "signed for reason"),
    ({"actor": "bob"}, {}, "signed for actor 'bob', not 'alice'"),
    ({"issued_at": datetime.now(UTC) - timedelta(hours=25)}, {}, "more than 24 h ago"),
    ({"issued_at": datetime.now(UTC) + timedelta(hours=1)}, {}, "in the future"),
])
def test_a_token_is_not_accepted_for_anything_but_what_was_signed(store, keys, fields, typed, match):
    signer = fields.get("actor", "alice")
    token = _sign(keys, signer, **fields)
    args = {"decision": "approve", "person": "alice", "reason": "reviewed"} | typed
    with pytest.raises(ApprovalRefused, match=match):
        record_decision(store, Registry(), _policy(keys), MODEL, "2", args["decision"],
                        args["person"], args["reason"], "ui", token=token)
    assert len(_refusals(store)) == 1


def test_a_key_the_policy_does_not_list_for_that_name_is_refused(store, keys):
    forged = sign(keys[0]["mallory"], action="approve", model=MODEL, version="2", actor="alice",
                  reason="reviewed")
    with pytest.raises(ApprovalRefused, match="does not match 'alice'"):
        record_decision(store, Registry(), _policy(keys), MODEL, "2", "approve", "alice",
                        "reviewed", "ui", token=forged)


def test_without_required_signatures_an_unsigned_decision_is_recorded_as_unsigned(store, keys):
    lax = _policy(keys, require_signature=False)
    record_decision(store, Registry(), lax, MODEL, "2", "approve", "bob", "ok", "cli")
    (decision,) = [e for e in store.events(MODEL) if e["kind"] == "decision"]
    assert decision["details"] == {"source": "cli", "signed": False}
    assert decision_problem(decision, MODEL, lax) is None
    # Acted on later under a policy that requires signatures: not any more.
    assert "unsigned" in decision_problem(decision, MODEL, _policy(keys))
    removed = _policy(keys, approvers=["risk-officer"], require_signature=False)
    assert "not an approver" in decision_problem(decision, MODEL, removed)


def test_launchpad_fields_left_blank_come_from_the_token(keys):
    token = _sign(keys, "alice")
    filled = fill_from_token(token, {"decision": "none", "version": "", "approver": "",
                                     "reason": ""},
                             {"decision": "action", "version": "version", "approver": "actor",
                              "reason": "reason"})
    assert filled == {"decision": "approve", "version": "2", "approver": "alice",
                      "reason": "reviewed"}
    typed = fill_from_token(token, {"version": "3"}, {"version": "version"})
    assert typed == {"version": "3"}, "a typed value is kept, then checked against the token"


def _rollback(store, policy, **kwargs):
    args = dict(model=MODEL, by="ops", reason="live AUC fell", to_version=None, expected_from=None,
                token=None, source="cli") | kwargs
    return authorize_rollback(store, policy, **args)


def test_a_rollback_by_someone_the_policy_does_not_list_is_refused_as_an_incident(store, keys):
    policy = _policy(keys)
    token = sign(keys[0]["risk-officer"], action="rollback", model=MODEL, version="",
                 actor="risk-officer", reason="live AUC fell")
    with pytest.raises(ApprovalRefused, match="'risk-officer' may not roll back"):
        _rollback(store, policy, by="risk-officer", token=token)
    (incident,) = store.incidents("refusal")
    assert incident["actor"] == "risk-officer" and "may not roll back" in incident["reason"]


def test_a_signed_rollback_by_a_listed_person_is_recorded_and_used_once(store, keys):
    policy = _policy(keys)
    with pytest.raises(ApprovalRefused, match="not signed"):
        _rollback(store, policy)
    token = sign(keys[0]["ops"], action="rollback", model=MODEL, version="1", actor="ops",
                 reason="live AUC fell")
    with pytest.raises(ApprovalRefused, match="signed for version '1', not ''"):
        _rollback(store, policy, token=token)
    identity = _rollback(store, policy, token=token, to_version="1")
    assert identity["signed"] is True
    (event,) = [e for e in store.events(MODEL) if e["kind"] == "rollback"]
    assert event["actor"] == "ops" and event["version"] == "1"
    with pytest.raises(ApprovalRefused, match="already used"):
        _rollback(store, policy, token=token, to_version="1")


def test_the_live_performance_sensor_name_cannot_be_typed_into_the_launchpad(store, keys):
    policy = _policy(keys)
    asked = dict(by=LIVE_ACTOR, reason="v3 live AUC 0.53", to_version="2", expected_from="3")
    with pytest.raises(ApprovalRefused, match="only from a request the sensor made itself"):
        _rollback(store, policy, **asked, source="ui")
    with pytest.raises(ApprovalRefused, match="not minted"):
        _rollback(store, policy, **asked, token="auto1.guessed", source="ui")
    token = mint_automation_token(store, model=MODEL, actor=LIVE_ACTOR, reason=asked["reason"],
                                  to_version="2", expected_from="3")
    assert token not in str(store.events(MODEL)), "only the token's hash is stored"
    with pytest.raises(ApprovalRefused, match="rollback_to '1' is not what"):
        _rollback(store, policy, **(asked | {"to_version": "1"}), token=token)
    with pytest.raises(ApprovalRefused, match="only in the name of the sensor"):
        _rollback(store, policy, by="ops", reason="x", token=token)
    assert _rollback(store, policy, **asked, token=token, source="sensor")["automation"] is True
    with pytest.raises(ApprovalRefused, match="already used"):
        _rollback(store, policy, **asked, token=token, source="ui")
    refused = store.incidents("refusal")
    assert len(refused) == 5 and all("sha256:" in str(i["details"]["token"]) or
                                     i["details"]["token"] is None for i in refused)
