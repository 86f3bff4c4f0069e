"""Alembic migrations of the index schema; run by :func:`node.store.schema.upgrade`."""
