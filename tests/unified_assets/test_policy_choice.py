"""Which policy file applies: UNIFIED_AI_POLICY or `demo --policy`, else the `policy:` named by
the dataset spec (kept next to it), else the shipped one; chosen in one place for the code
location, every CLI command and the demo. A BYO user never edits the installed package."""

from __future__ import annotations

import dataclasses
import types

import pytest

from tests.policies import write_policy
from unified_assets import cli
from unified_assets.definitions import build_definitions
from unified_assets.ml import dataset_spec
from unified_assets.settings import POLICY_ENV, load_settings, policy_choice

STRICT = {"promotion": {"quality": {"roc_auc": {"min": 0.91}}}}


@pytest.fixture
def spec_naming(monkeypatch, tmp_path):
    """A dataset spec that names a policy (a stub of `load_spec`, as the real field may not
    have landed where this runs; the real field is tested below)."""
    policy = write_policy(tmp_path, STRICT, name="spec-policy.yaml")

    def load_spec(path, landing_dir=None):
        return types.SimpleNamespace(policy=str(policy))

    monkeypatch.setattr(dataset_spec, "load_spec", load_spec)
    return str(tmp_path / "spec.yaml"), str(policy)


def test_the_environment_wins_then_the_spec_then_the_shipped_policy(settings, tmp_path, spec_naming):
    spec, spec_policy = spec_naming
    assert policy_choice(settings) == (None, "shipped with the code")
    with_spec = dataclasses.replace(settings, dataset_spec=spec)
    assert policy_choice(with_spec) == (spec_policy, f"dataset spec {spec}")
    env = write_policy(tmp_path, name="env.yaml")
    chosen = load_settings({POLICY_ENV: str(env), "UNIFIED_AI_HOME": str(settings.home)})
    assert policy_choice(dataclasses.replace(chosen, dataset_spec=spec)) == (str(env), POLICY_ENV)


def test_the_code_location_runs_under_the_policy_next_to_the_spec(settings, spec_naming):
    spec, spec_policy = spec_naming
    defs = build_definitions(dataclasses.replace(settings, dataset_spec=spec))
    policy = defs.resources["policy"]
    assert policy.path == spec_policy
    assert policy.policy.promotion.quality["roc_auc"].min == 0.91


@pytest.mark.parametrize("how", ["flag", "env"])
def test_demo_honours_policy_flag_and_environment(tmp_path, monkeypatch, capsys, how):
    """The finding: `unified-ai demo` ignored UNIFIED_AI_POLICY and had no --policy. A policy
    that switches a gate off is refused before anything trains, naming the file."""
    bad = write_policy(tmp_path, {"promotion": {"quality": {"brier_skill": {"min": 0.0}}}},
                       name="mine.yaml")
    argv = ["demo", "--batches", "1", "--rows", "50", "--home", str(tmp_path / "home")]
    if how == "flag":
        monkeypatch.delenv(POLICY_ENV, raising=False)
        argv += ["--policy", str(bad)]
    else:
        monkeypatch.setenv(POLICY_ENV, str(bad))
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert str(bad) in err and "quality.brier_skill.min: 0.0" in err


def test_a_real_spec_field_names_a_policy_resolved_next_to_it(tmp_path, settings):
    from unified_assets.ml.sklearn_datasets import write_breast_cancer_example

    spec = write_breast_cancer_example(tmp_path / "byo", batches=1)
    write_policy(spec.parent, STRICT, name="policy.yaml")
    spec.write_text(spec.read_text() + "policy: policy.yaml\n")
    chosen, source = policy_choice(dataclasses.replace(settings, dataset_spec=str(spec)))
    assert chosen == str((spec.parent / "policy.yaml").resolve()) and source.startswith("dataset")
