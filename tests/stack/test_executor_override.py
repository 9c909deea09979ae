"""UNIFIED_AI_EXECUTOR: the kubernetes settings path with the local executor, as the production
stack on one machine (scripts/stack.sh) runs it; no processes, just the definitions."""

import dagster as dg
import pytest
from dagster_aws.s3 import S3PickleIOManager

from resources.decision_store import DecisionStore
from tests.policies import write_policy
from unified_assets.definitions import build_definitions
from unified_assets.services.identity import new_key_pair
from unified_assets.settings import load_settings


def _kubernetes_env(tmp_path, **extra: str) -> dict[str, str]:
    keys = {person: new_key_pair()[1] for person in ("alice", "bob", "risk-officer", "ops")}
    policy = write_policy(tmp_path, {"approval": {"require_signature": True, "keys": keys}})
    return {"UNIFIED_AI_DEPLOYMENT": "kubernetes", "UNIFIED_AI_HOME": str(tmp_path),
            "UNIFIED_AI_POLICY": str(policy), **extra}


def test_kubernetes_path_with_the_multiprocess_executor(tmp_path):
    settings = load_settings(_kubernetes_env(tmp_path, UNIFIED_AI_EXECUTOR="multiprocess"))
    assert settings.deployment == "kubernetes" and settings.executor == "multiprocess"
    defs = build_definitions(settings)
    dg.Definitions.validate_loadable(defs)
    assert defs.executor.name == "multiprocess"
    # Everything else is the kubernetes path: S3 IO, the EnvVar'd decision store and ledger key.
    assert isinstance(defs.resources["io_manager"], S3PickleIOManager)
    store = defs.resources["decisions"]
    assert isinstance(store, DecisionStore)
    assert (store.url, store.chain_key) == ("UNIFIED_AI_DECISIONS_URL", "UNIFIED_AI_LEDGER_KEY")


def test_unset_executor_is_the_deployments_own(tmp_path):
    assert load_settings(_kubernetes_env(tmp_path)).executor == "k8s"
    assert load_settings(_kubernetes_env(tmp_path, UNIFIED_AI_EXECUTOR=" ")).executor == "k8s"
    assert load_settings({"UNIFIED_AI_HOME": str(tmp_path)}).executor == "multiprocess"


@pytest.mark.parametrize("value", ["k8s", "celery", "MULTIPROCESS"])
def test_unknown_executor_is_an_error(tmp_path, value):
    with pytest.raises(ValueError, match=f"UNIFIED_AI_EXECUTOR={value!r} is not an executor"):
        load_settings(_kubernetes_env(tmp_path, UNIFIED_AI_EXECUTOR=value))
