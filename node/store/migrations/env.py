"""Alembic's entry point: migrate the connection :func:`node.store.schema.upgrade` hands over.

There is no alembic.ini and no URL here: the node's configuration names the database, and
the caller opens the connection (holding the lock that keeps two nodes from migrating at
once).
"""

from __future__ import annotations

from alembic import context

from node.store.models import Base

connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    # SQLite can't ALTER most things in place: batch mode copies the table instead.
    render_as_batch=connection.dialect.name == "sqlite",
)
with context.begin_transaction():
    context.run_migrations()
