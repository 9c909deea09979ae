"""The decision log as unified-ai created it before migrations (`metadata.create_all`).

Revision ID: 0001
Revises: (none, the first revision)
A store created by that code has this table and no `alembic_version`; the store stamps it at
this revision after checking its columns against `decision_log` below, so keep this table
exactly as it was: it is the schema those stores have.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def decision_log(metadata: sa.MetaData) -> sa.Table:
    """The table exactly as the pre-migration `DecisionStore._setup` defined it."""
    return sa.Table(
        "decision_log", metadata,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("record", sa.String(20), nullable=False),  # event/change/outcome/incident
        sa.Column("model_name", sa.String(200)),
        sa.Column("version", sa.String(50)),  # event: the version decided on
        sa.Column("change_seq", sa.Integer),  # change: its number per model
        sa.Column("payload", sa.Text, nullable=False),  # canonical JSON, what is hashed
        sa.Column("prev_hash", sa.String(64), nullable=False, unique=True),
        sa.Column("hash", sa.String(64), nullable=False),
        sa.UniqueConstraint("model_name", "change_seq", name="one_change_per_seq"),
        sa.Index("by_record_model", "record", "model_name"),
    )


def upgrade() -> None:
    # The same DDL create_all emitted (table, then its index), so new and adopted stores match.
    decision_log(sa.MetaData()).create(op.get_bind())


def downgrade() -> None:
    op.drop_table("decision_log")
