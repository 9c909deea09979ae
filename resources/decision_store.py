"""Append-only record of approvals, champion changes and incidents (any SQLAlchemy URL).

The interface offers inserts and reads only: no decision, change or incident can be edited
or deleted through the project. `champion_changes` has a unique (model, seq) key, which is
how two racing promotions resolve to exactly one winner.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import dagster as dg
from pydantic import PrivateAttr


class ChangeConflict(RuntimeError):
    """Another champion change was recorded first (a concurrent promotion or rollback)."""


def _now() -> datetime:
    return datetime.now(UTC)


class DecisionStore(dg.ConfigurableResource):
    """`url`: e.g. sqlite:////path/decisions.db locally, postgresql://... in production."""

    url: str
    _engine: Any = PrivateAttr(default=None)
    _tables: Any = PrivateAttr(default=None)

    def _setup(self):
        if self._engine is None:
            import sqlalchemy as sa

            metadata = sa.MetaData()
            events = sa.Table(
                "approval_events", metadata,
                sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
                sa.Column("model_name", sa.String(200), nullable=False),
                sa.Column("version", sa.String(50), nullable=False),
                sa.Column("kind", sa.String(20), nullable=False),  # request/decision/refusal
                sa.Column("decision", sa.String(20)),
                sa.Column("actor", sa.String(200)),
                sa.Column("reason", sa.Text),
                sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
                sa.Column("expires_at", sa.DateTime(timezone=True)),
                sa.Column("details", sa.Text),
            )
            changes = sa.Table(
                "champion_changes", metadata,
                sa.Column("model_name", sa.String(200), primary_key=True),
                sa.Column("seq", sa.Integer, primary_key=True, autoincrement=False),
                sa.Column("action", sa.String(20), nullable=False),  # promote/rollback
                sa.Column("from_version", sa.String(50)),
                sa.Column("to_version", sa.String(50), nullable=False),
                sa.Column("actor", sa.String(200), nullable=False),
                sa.Column("reason", sa.Text, nullable=False),
                sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
                sa.Column("details", sa.Text),
            )
            incidents = sa.Table(
                "incidents", metadata,
                sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
                sa.Column("kind", sa.String(50), nullable=False),
                sa.Column("model_name", sa.String(200)),
                sa.Column("actor", sa.String(200)),
                sa.Column("reason", sa.Text),
                sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
                sa.Column("details", sa.Text),
            )
            engine = sa.create_engine(self.url)
            metadata.create_all(engine)
            self._engine = engine
            self._tables = {"events": events, "changes": changes, "incidents": incidents}
        return self._engine, self._tables

    # approvals -------------------------------------------------------------------------

    def append_event(self, *, model_name: str, version: str, kind: str, actor: str | None = None,
                     decision: str | None = None, reason: str | None = None,
                     expires_at: datetime | None = None, details: dict | None = None) -> int:
        engine, tables = self._setup()
        row = dict(model_name=model_name, version=version, kind=kind, decision=decision,
                   actor=actor, reason=reason, created_at=_now(), expires_at=expires_at,
                   details=json.dumps(details or {}, default=str))
        with engine.begin() as conn:
            return int(conn.execute(tables["events"].insert().values(**row)).inserted_primary_key[0])

    def events(self, model_name: str | None = None, version: str | None = None,
               after_id: int = 0) -> list[dict]:
        engine, tables = self._setup()
        table = tables["events"]
        query = table.select().where(table.c.id > after_id).order_by(table.c.id)
        if model_name is not None:
            query = query.where(table.c.model_name == model_name)
        if version is not None:
            query = query.where(table.c.version == version)
        with engine.connect() as conn:
            return [self._row(r) for r in conn.execute(query).mappings()]

    # champion history ------------------------------------------------------------------

    def changes(self, model_name: str) -> list[dict]:
        engine, tables = self._setup()
        table = tables["changes"]
        query = table.select().where(table.c.model_name == model_name).order_by(table.c.seq)
        with engine.connect() as conn:
            return [self._row(r) for r in conn.execute(query).mappings()]

    def record_change(self, *, model_name: str, expected_seq: int, action: str,
                      from_version: str | None, to_version: str, actor: str, reason: str,
                      details: dict | None = None) -> dict:
        """Append change number `expected_seq + 1`; raises ChangeConflict if it exists."""
        import sqlalchemy as sa

        engine, tables = self._setup()
        row = dict(model_name=model_name, seq=expected_seq + 1, action=action,
                   from_version=from_version, to_version=to_version, actor=actor, reason=reason,
                   created_at=_now(), details=json.dumps(details or {}, default=str))
        try:
            with engine.begin() as conn:
                conn.execute(tables["changes"].insert().values(**row))
        except sa.exc.IntegrityError:
            latest = self.changes(model_name)[-1]
            raise ChangeConflict(
                f"champion change #{expected_seq + 1} of {model_name} was already recorded: "
                f"{latest['action']} to v{latest['to_version']} by {latest['actor']} at "
                f"{latest['created_at']}; re-run to act on the new state"
            ) from None
        return self._row(row)

    # incidents -------------------------------------------------------------------------

    def record_incident(self, *, kind: str, model_name: str | None, actor: str | None,
                        reason: str | None, details: dict | None = None) -> int:
        engine, tables = self._setup()
        row = dict(kind=kind, model_name=model_name, actor=actor, reason=reason,
                   created_at=_now(), details=json.dumps(details or {}, default=str))
        with engine.begin() as conn:
            return int(conn.execute(tables["incidents"].insert().values(**row))
                       .inserted_primary_key[0])

    def incidents(self, kind: str | None = None) -> list[dict]:
        engine, tables = self._setup()
        table = tables["incidents"]
        query = table.select().order_by(table.c.id)
        if kind is not None:
            query = query.where(table.c.kind == kind)
        with engine.connect() as conn:
            return [self._row(r) for r in conn.execute(query).mappings()]

    @staticmethod
    def _row(row) -> dict:
        out = dict(row)
        if out.get("details"):
            out["details"] = json.loads(out["details"])
        for key in ("created_at", "expires_at"):
            value = out.get(key)
            if isinstance(value, datetime) and value.tzinfo is None:
                out[key] = value.replace(tzinfo=UTC)  # sqlite drops the zone
        return out
