"""Signed decisions: a token binds who, what, which version and why, to one key, for a
limited time; anything else is refused with the reason."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta

import pytest

from unified_assets.services.identity import (
    IdentityError,
    load_private_key,
    read_token,
    sign,
    token_id,
    verify,
    write_key_pair,
)

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
DECISION = dict(action="approve", model="payments-risk", version="7", actor="alice",
                reason="report reviewed")


@pytest.fixture(scope="module")
def alice(tmp_path_factory):
    path, public = write_key_pair("alice", tmp_path_factory.mktemp("keys"))
    return load_private_key(path), {"alice": public}


def test_a_key_pair_is_private_and_never_overwritten(tmp_path):
    path, public = write_key_pair("bob", tmp_path / "keys")
    assert path.stat().st_mode & 0o777 == 0o600
    assert public.startswith("ed25519:") and len(base64.b64decode(public[8:])) == 32
    with pytest.raises(IdentityError, match="already exists"):
        write_key_pair("bob", tmp_path / "keys")
    assert path.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")


@pytest.mark.parametrize("name", ["group:leads", "policy", "policy:live-performance", "al ice"])
def test_no_key_pair_for_a_name_that_is_not_a_person(tmp_path, name):
    with pytest.raises(IdentityError):
        write_key_pair(name, tmp_path)


def test_a_key_file_others_can_read_is_refused(tmp_path):
    path, _ = write_key_pair("carol", tmp_path)
    path.chmod(0o644)
    with pytest.raises(IdentityError, match="lets others read it"):
        load_private_key(path)
    with pytest.raises(IdentityError, match="file not found"):
        load_private_key(tmp_path / "nobody.key")


def test_a_signed_decision_verifies_and_says_what_was_signed(alice):
    key, keys = alice
    token = sign(key, **DECISION, issued_at=NOW)
    decision = verify(token, keys, NOW + timedelta(hours=1))
    assert (decision.action, decision.model, decision.version, decision.actor, decision.reason) == \
        tuple(DECISION.values())
    assert read_token(token) == decision
    again = sign(key, **DECISION, issued_at=NOW)
    assert token_id(again) != token_id(token), "two signatures are two tokens"


def _tamper(token: str, **changes) -> str:
    version, payload, signature = token.split(".")
    data = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    data.update(changes)
    raw = json.dumps(data, sort_keys=True, separators=(",", ":")).encode()
    return ".".join((version, base64.urlsafe_b64encode(raw).decode().rstrip("="), signature))


@pytest.mark.parametrize("changes", [{"version": "8"}, {"action": "reject"}, {"reason": "other"},
                                     {"model": "other-model"}, {"issued_at": 1}])
def test_a_token_altered_to_mean_something_else_is_refused(alice, changes):
    key, keys = alice
    token = _tamper(sign(key, **DECISION, issued_at=NOW), **changes)
    with pytest.raises(IdentityError, match="does not match"):
        verify(token, keys, NOW)


def test_a_token_signed_by_another_key_or_for_an_unlisted_name_is_refused(alice, tmp_path):
    key, keys = alice
    mallory_path, _ = write_key_pair("mallory", tmp_path)
    mallory = load_private_key(mallory_path)
    with pytest.raises(IdentityError, match="does not match 'alice'"):
        verify(sign(mallory, **DECISION, issued_at=NOW), keys, NOW)
    with pytest.raises(IdentityError, match="'mallory', whose key the policy does not list"):
        verify(sign(mallory, **(DECISION | {"actor": "mallory"}), issued_at=NOW), keys, NOW)


def test_an_old_or_future_token_is_refused(alice):
    key, keys = alice
    token = sign(key, **DECISION, issued_at=NOW)
    with pytest.raises(IdentityError, match="more than 24 h ago"):
        verify(token, keys, NOW + timedelta(hours=24, seconds=1))
    with pytest.raises(IdentityError, match="in the future"):
        verify(token, keys, NOW - timedelta(minutes=10))
    assert verify(token, keys, NOW + timedelta(hours=23)).version == "7"


@pytest.mark.parametrize("token", ["", "hello", "uai1.x.y", "uai2.e30.AA", "uai1.e30.AA"])
def test_a_damaged_token_is_refused(alice, token):
    with pytest.raises(IdentityError):
        verify(token, alice[1], NOW)


def test_signing_refuses_what_could_never_be_accepted(alice):
    key, _ = alice
    with pytest.raises(IdentityError, match="group"):
        sign(key, **(DECISION | {"actor": "group:leads"}))
    with pytest.raises(IdentityError, match="reason"):
        sign(key, **(DECISION | {"reason": " "}))
    with pytest.raises(IdentityError, match="action"):
        sign(key, **(DECISION | {"action": "promote"}))
