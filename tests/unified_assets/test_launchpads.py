"""The launchpad a person opens shows only what that person fills in: no resources (sqlite
URLs, absolute paths) and no fields of other steps."""

import yaml
from dagster._config import process_config
from dagster._core.snap.snap_to_yaml import default_values_yaml_from_type_snap

from unified_assets.definitions import build_definitions


def _launchpad_yaml(defs, job_name: str) -> dict:
    """What the Dagster UI pre-fills in the job's launchpad (GraphQL `rootDefaultYaml`)."""
    snap = defs.resolve_job_def(job_name).get_job_snapshot()
    schema = snap.config_schema_snapshot
    root = schema.get_config_snap(snap.mode_def_snaps[0].root_config_key)
    return yaml.safe_load(default_values_yaml_from_type_snap(schema, root)) or {}


def test_approve_or_reject_launchpad_has_only_the_decision_fields(settings):
    prefilled = _launchpad_yaml(build_definitions(settings), "approve_or_reject")
    assert set(prefilled) == {"decision", "version", "approver", "reason", "token"}
    assert prefilled["decision"] == "none"
    assert str(settings.home) not in yaml.safe_dump(prefilled)


def test_rollback_production_launchpad_has_only_what_a_person_fills(settings):
    """Who, why, to what (or the signed token); automated rollbacks still pass expected_from
    in the same shape (sensors/live.py, the CLI), it is just not pre-filled."""
    defs = build_definitions(settings)
    prefilled = _launchpad_yaml(defs, "rollback_production")
    assert prefilled == {"ops": {"production_model": {"config": {
        "rollback_to": "", "by": "", "reason": "", "token": ""}}}}
    job = defs.resolve_job_def("rollback_production")
    automated = {"ops": {"production_model": {"config": {
        "action": "rollback", "rollback_to": "1", "expected_from": "2", "by": "policy",
        "reason": "live AUC fell", "token": "t"}}}}
    assert process_config(job.run_config_schema.config_type, automated).success
    assert not process_config(job.run_config_schema.config_type, {"resources": {}}).success
