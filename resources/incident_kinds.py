"""Every kind of incident the project records: `DecisionStore.record_incident` refuses any
other, so the CLI's `incidents --kind` choices are the whole list. Its own module so the CLI's
parser names them without importing the decision store (and Dagster)."""

INCIDENT_KINDS = ("run_failure", "rollback", "refusal", "live_regression", "escalation",
                  "registry_fault", "champion_missing", "champion_unusable", "alias_drift",
                  "audit_failure")
