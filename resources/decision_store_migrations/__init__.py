"""Alembic migrations of the decision store's schema (run by
`resources.decision_store.upgrade_decision_store`; no alembic.ini)."""
