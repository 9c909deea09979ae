"""Alembic environment of the decision store. Run only through
`resources.decision_store.upgrade_decision_store(url)`: it passes the open connection, already
inside its locked transaction, as `config.attributes["connection"]`, so the migrations commit
or roll back together with the version check and the lock."""

from alembic import context

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run the decision store's migrations through "
                       "resources.decision_store.upgrade_decision_store(url)")
context.configure(connection=connection, target_metadata=None)
with context.begin_transaction():
    context.run_migrations()
