"""Index the approval reads: events of one model version.

Revision ID: 0002
Revises: 0001
Every promotion and approval check reads `events(model_name, version)`, i.e. record = 'event'
AND model_name = ? AND version = ? ORDER BY id; with only (record, model_name) indexed it scans
every event of the model (a few per version, so it grows with each retrain). The new index
serves that read and, by its (record, model_name) prefix, every read the old index served
(`changes`, outcomes, `events(model_name)`), so the old one is dropped: one index per append
less. Indexes only: every row, and so the hash chain, is untouched.
"""

from __future__ import annotations

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # if_not_exists / if_exists: an adopted store made by hand may lack the old index.
    op.create_index("by_record_model_version", "decision_log", ["record", "model_name", "version"],
                    if_not_exists=True)
    op.drop_index("by_record_model", table_name="decision_log", if_exists=True)


def downgrade() -> None:
    op.create_index("by_record_model", "decision_log", ["record", "model_name"], if_not_exists=True)
    op.drop_index("by_record_model_version", table_name="decision_log", if_exists=True)
