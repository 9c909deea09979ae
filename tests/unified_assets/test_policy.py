"""The policy fails closed: an empty, partial, ambiguous or self-defeating policy file is
refused at load with an error naming the file and the key; groups are never people."""

from __future__ import annotations

import base64

import pytest
import yaml

from tests.policies import overlay, shipped_policy
from unified_assets.policy import PolicyError, load_policy

KEY = "ed25519:" + base64.b64encode(bytes(range(32))).decode()


def _load(tmp_path, text: str):
    path = tmp_path / "policy.yaml"
    path.write_text(text)
    return load_policy(path), path


def _refused(tmp_path, data_or_text, *fragments: str) -> str:
    text = data_or_text if isinstance(data_or_text, str) else yaml.safe_dump(data_or_text)
    path = tmp_path / "policy.yaml"
    path.write_text(text)
    with pytest.raises(PolicyError) as error:
        load_policy(path)
    message = str(error.value)
    assert str(path) in message
    for fragment in fragments:
        assert fragment in message
    return message


def _without(*dotted: str) -> dict:
    policy = shipped_policy()
    for key in dotted:
        *parents, last = key.split(".")
        node = policy
        for parent in parents:
            node = node[parent]
        del node[last]
    return policy


def test_the_shipped_policy_loads_and_gates():
    policy = load_policy()
    assert any(bound.blocking for bound in policy.promotion.quality.values())
    assert policy.rollback.by and policy.approval.approvers


@pytest.mark.parametrize("text", ["", "\n\n", "# nothing but a comment\n# and another\n", "---\n"])
def test_an_empty_or_comment_only_policy_is_refused(tmp_path, text):
    _refused(tmp_path, text, "empty", "promotion")


def test_a_duplicate_top_level_section_is_refused(tmp_path):
    text = DEFAULT_TEXT() + "promotion:\n  quality: {f1: {min: 0.1}}\n"
    message = _refused(tmp_path, text, "duplicate key 'promotion'")
    assert "first at line" in message


@pytest.mark.parametrize("text", [
    "promotion:\n  quality:\n    roc_auc: {min: 0.7, min: 0.1}\n",
    "approval:\n  groups:\n    leads: [alice]\n    leads: [mallory]\n",
])
def test_a_duplicate_key_at_any_level_is_refused(tmp_path, text):
    key = "min" if "min:" in text else "leads"
    _refused(tmp_path, text, f"duplicate key '{key}'")


def test_yaml_merge_keys_are_refused(tmp_path):
    text = ("base: &strict {min: 0.7}\npromotion:\n  quality:\n    roc_auc:\n      <<: *strict\n"
            "      min: 0.1\n")
    _refused(tmp_path, text, "merge keys")


@pytest.mark.parametrize("missing, key", [
    (("promotion",), "promotion: missing"),
    (("approval",), "approval: missing"),
    (("rollback",), "rollback: missing"),
    (("promotion.quality",), "promotion.quality: missing"),
    (("approval.approvers",), "approval.approvers: missing"),
    (("rollback.by",), "rollback.by: missing"),
])
def test_a_missing_gate_section_is_refused(tmp_path, missing, key):
    _refused(tmp_path, _without(*missing), key)


@pytest.mark.parametrize("overrides, fragments", [
    ({"promotion": {"quality": {"roc_auc": {"min": 1.2}}}},
     ["quality.roc_auc.min: 1.2", "no model can pass"]),
    ({"promotion": {"quality": {"roc_auc": {"min": 0.9, "max": 0.8}}}}, ["quality.roc_auc", "exceeds max"]),
    ({"promotion": {"quality": {"brier": {"max": -0.1}}}}, ["quality.brier.max: -0.1", "no model can pass"]),
    ({"promotion": {"quality": {"latency_ms_per_1k": {"max": 0}}}}, ["quality.latency_ms_per_1k.max"]),
    ({"promotion": {"improvement": {"min_absolute": 1.5}}}, ["improvement", "min_absolute: 1.5"]),
    ({"promotion": {"segments": {"min_rows": 50_000}}}, ["promotion.segments", "min_rows: 50000"]),
    ({"promotion": {"segments": {"min_positives": 5_000}}}, ["segments", "min_positives: 5000"]),
    ({"live": {"min_rows": 1_000_000}}, ["live", "min_rows: 1000000", "never act"]),
])
def test_a_gate_no_model_can_pass_or_that_counts_nothing_is_refused(tmp_path, overrides, fragments):
    _refused(tmp_path, overlay(shipped_policy(), overrides), *fragments)


def _all_informational() -> dict:
    policy = shipped_policy()
    for bound in policy["promotion"]["quality"].values():
        bound["blocking"] = False
    return policy


@pytest.mark.parametrize("policy, fragments", [
    (_all_informational(), ["promotion: quality: no blocking bound"]),
    (overlay(shipped_policy(), {"promotion": {"quality": {"roc_auc": {"min": 0.5}}}}),
     ["quality.roc_auc.min: 0.5", "chance level"]),
    (overlay(shipped_policy(), {"promotion": {"quality": {"pr_auc": {"min": 0.0}}}}),
     ["quality.pr_auc.min: 0.0", "lets every model pass"]),
    (overlay(shipped_policy(), {"promotion": {"quality": {"brier": {"max": 1.0}}}}),
     ["quality.brier.max: 1.0", "lets every model pass"]),
    (overlay(shipped_policy(), {"promotion": {"segments": {"floor": 0.0}}}), ["segments", "floor: 0.0"]),
    (overlay(shipped_policy(), {"promotion": {"segments": {"max_disparity": 1.0}}}),
     ["segments", "max_disparity: 1.0"]),
    (overlay(shipped_policy(), {"promotion": {"segments": {"max_disparity": 0}}}),
     ["segments.max_disparity"]),
    (overlay(shipped_policy(), {"live": {"floor": 0.0}}), ["live", "floor: 0.0 never triggers"]),
    (overlay(shipped_policy(), {"live": {"max_drop_vs_previous": 1.0}}), ["live", "max_drop_vs_previous"]),
])
def test_a_gate_that_switches_itself_off_is_refused(tmp_path, policy, fragments):
    _refused(tmp_path, policy, *fragments)


def test_null_switches_an_optional_segment_rule_off_explicitly(tmp_path):
    policy = overlay(shipped_policy(), {"promotion": {"segments": {"floor": None, "max_disparity": None}}})
    loaded, _ = _load(tmp_path, yaml.safe_dump(policy))
    assert loaded.promotion.segments.floor is None


def test_a_group_is_never_a_person():
    policy = load_policy()
    assert policy.approval.may_approve("alice")
    assert not policy.approval.may_approve("group:ml-leads"), "the group itself is not an approver"
    assert policy.may_roll_back("bob") and policy.may_roll_back("ops")
    assert not policy.may_roll_back("group:ml-leads")
    assert not policy.approval.may_approve("policy") and not policy.may_roll_back("policy:live-performance")


@pytest.mark.parametrize("overrides, fragments", [
    ({"approval": {"approvers": ["group:nobody"]}}, ["approval: approvers.0: unknown group 'group:nobody'"]),
    ({"approval": {"approvers": ["policy"]}}, ["approvers.0", "reserved"]),
    ({"approval": {"groups": {"ml-leads": ["alice", "group:ops"]}}},
     ["approval.groups: ml-leads.1", "is a group, not a person"]),
    ({"approval": {"groups": {"ml-leads": []}}}, ["approval.groups: ml-leads", "no members"]),
    ({"approval": {"keys": {"group:ml-leads": KEY}}}, ["approval.keys: group:ml-leads", "not a person"]),
    ({"approval": {"keys": {"alice": "ed25519:bm90LWEta2V5"}}}, ["approval.keys: alice", "32"]),
    ({"approval": {"keys": {"alice": "rsa:AAAA"}}}, ["approval.keys: alice", "ed25519:<base64>"]),
    ({"rollback": {"by": ["policy:live-performance"]}}, ["rollback.by.0", "reserved"]),
    ({"rollback": {"by": ["group:sre"]}}, ["rollback.by.0: unknown group 'group:sre'"]),
    ({"rollback": {"by": ["alice smith"]}}, ["rollback.by.0", "not a person's name"]),
])
def test_names_that_are_not_people_are_refused_where_people_are_listed(tmp_path, overrides, fragments):
    _refused(tmp_path, overlay(shipped_policy(), overrides), *fragments)


def test_signatures_are_required_unless_the_policy_says_otherwise(tmp_path):
    policy = shipped_policy()
    del policy["approval"]["require_signature"]
    _refused(tmp_path, policy, "approval: keys: approver 'alice' has no key", "require_signature")
    policy["approval"]["keys"] = {name: KEY for name in ("alice", "bob", "risk-officer")}
    _refused(tmp_path, policy, "rollback.by: 'ops' has no key")
    policy["approval"]["keys"]["ops"] = KEY
    loaded, _ = _load(tmp_path, yaml.safe_dump(policy))
    assert loaded.approval.require_signature is True


@pytest.mark.parametrize("rule, fragments", [
    ({"Classifier": {"min_replicas": 3, "max_replicas": 2}},
     ["serving.autoscaling.Classifier", "min_replicas: 3 exceeds max_replicas: 2"]),
    ({"Explainer": {"min_replicas": 2}},  # its default max_replicas is 1
     ["serving.autoscaling.Explainer", "min_replicas: 2 exceeds max_replicas: 1"]),
    ({"Retriever": {"max_replicas": 0}}, ["serving.autoscaling.Retriever.max_replicas: 0 is not"]),
    ({"Retriever": {"min_replicas": 0}}, ["serving.autoscaling.Retriever.min_replicas: 0 is not",
                                          "scaled to zero"]),
    ({"FraudModel": {"min_replicas": 1.5}}, ["FraudModel.min_replicas: 1.5 is not a whole number"]),
    ({"FraudModel": {"max_replicas": True}}, ["FraudModel.max_replicas: True is not"]),
    ({"Classifier": {"target_ongoing_requests": 0}},
     ["serving.autoscaling.Classifier.target_ongoing_requests: 0 is not a positive number"]),
    ({"Classifier": {"target_ongoing_requests": 17}},
     ["Classifier.target_ongoing_requests: 17 is more than one Classifier replica takes at "
      "once (16)"]),
    ({"SupportIngress": {"upscale_delay_s": -5}},
     ["serving.autoscaling.SupportIngress.upscale_delay_s: -5 is not a positive number of seconds"]),
    ({"SupportIngress": {"downscale_delay_s": "soon"}},
     ["SupportIngress.downscale_delay_s: 'soon' is not a positive number of seconds"]),
    ({"SupportIngress": {"look_back_period_s": 5}},
     ["look_back_period_s: 5.0 is not longer than metrics_interval_s: 10.0"]),
    ({"SupportIngress": {"max_replica": 3}}, ["SupportIngress.max_replica", "Extra inputs"]),
    ({"Decider": {"max_replicas": 3}}, ["serving.autoscaling: unknown deployment(s) 'Decider'",
                                        "SupportIngress, Classifier"]),
])
def test_bad_autoscaling_settings_are_refused_naming_the_field_and_value(tmp_path, rule, fragments):
    _refused(tmp_path, overlay(shipped_policy(), {"serving": {"autoscaling": rule}}), *fragments)


def test_autoscaling_defaults_fill_what_the_policy_leaves_out(tmp_path):
    from unified_assets.policy import DEFAULT_AUTOSCALING
    from unified_assets.serving.profiles import MAX_ONGOING_REQUESTS, PARTS

    # Every deployment of the workflow, and only those, has a rule; the shipped file states
    # the defaults.
    assert set(DEFAULT_AUTOSCALING) == {name for name, _, _ in PARTS.values()} \
        == set(MAX_ONGOING_REQUESTS)
    assert load_policy().serving.rules() == DEFAULT_AUTOSCALING
    without = shipped_policy()
    del without["serving"]
    loaded, _ = _load(tmp_path, yaml.safe_dump(without))
    assert loaded.serving.rules() == DEFAULT_AUTOSCALING
    partial, _ = _load(tmp_path, yaml.safe_dump(overlay(without, {"serving": {"autoscaling": {
        "Classifier": {"max_replicas": 4}}}})))
    classifier = partial.serving.rule("Classifier")
    assert classifier.autoscaling_config() == {**DEFAULT_AUTOSCALING["Classifier"]
                                               .autoscaling_config(), "max_replicas": 4}
    assert partial.serving.rule("Retriever") == DEFAULT_AUTOSCALING["Retriever"]


def DEFAULT_TEXT() -> str:  # noqa: N802 - reads like the constant it stands for
    from unified_assets.policy import DEFAULT_POLICY_PATH

    return DEFAULT_POLICY_PATH.read_text()


def test_a_policy_file_is_parsed_once_per_version(tmp_path, monkeypatch):
    """Every run's resources load the policy: the same file is parsed once, and an edited
    file is parsed again at once, even when its size and timestamp did not change."""
    import os

    from tests.policies import write_policy
    from unified_assets import policy as policy_module

    path = write_policy(tmp_path, {"approval": {"approvers": ["alice"]}})
    parsed: list[str] = []
    parse = policy_module.parse_policy
    monkeypatch.setattr(policy_module, "parse_policy",
                        lambda data, origin: parsed.append(origin) or parse(data, origin))
    first = load_policy(path)
    assert load_policy(str(path)) is first and parsed == [str(path)]
    stat = path.stat()
    write_policy(tmp_path, {"approval": {"approvers": ["carol"]}})  # same size
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    edited = load_policy(path)
    assert edited.approval.approvers != first.approval.approvers and len(parsed) == 2
    path.unlink()
    with pytest.raises(PolicyError, match="file not found"):
        load_policy(path)
