"""The index schema, brought up to this release's with Alembic migrations.

Every process that opens the index calls :func:`upgrade` first; it is a no-op once the
database is at the newest revision. Three starting points:

- an empty database: the migrations create every table;
- an index from a release before migrations (tables made by ``create_all``, no
  ``alembic_version``): it is stamped with the baseline revision, which is that schema,
  and upgraded from there; nothing in it is rewritten;
- an index from an earlier release with migrations: upgraded from its revision.

Two nodes starting on one PostgreSQL take an advisory lock, so only one migrates (on
SQLite one node owns the file, and its service migrates before its workers start).
``medgemma-node db upgrade`` does the same by hand, and ``medgemma-node db current`` says
where a database stands.
"""

from __future__ import annotations

import logging
from functools import cache
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, inspect, text

log = logging.getLogger(__name__)

MIGRATIONS = Path(__file__).with_name("migrations")
BASELINE = "0001"
# Any constant: the key of PostgreSQL's advisory lock held while migrating.
_PG_LOCK_KEY = 0x4D474E4F4445  # "MGNODE"
_LEGACY_TABLE = "studies"  # present in every index a release before migrations made


class SchemaError(RuntimeError):
    """The database can't be brought to this release's schema; the message says why."""


def _config(connection: Connection) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    return config


@cache
def _script() -> ScriptDirectory:
    """The migrations this release ships, read once per process (every Index asks)."""
    return ScriptDirectory(str(MIGRATIONS))


def head() -> str:
    """The newest revision this release knows."""
    revision = _script().get_current_head()
    if revision is None:
        raise SchemaError(f"no migrations in {MIGRATIONS}")
    return revision


def current(connection: Connection) -> str | None:
    """The revision the database is at; None for an empty database or one from before
    migrations."""
    return MigrationContext.configure(connection).get_current_revision()


def upgrade(engine: Engine) -> None:
    """Bring the database at ``engine`` to :func:`head`, once even with several nodes."""
    newest = head()
    with engine.begin() as connection:
        _lock(connection)
        found = current(connection)
        if found == newest:
            return
        config = _config(connection)
        if found is None and inspect(connection).has_table(_LEGACY_TABLE):
            log.warning(
                "index %s predates schema migrations: stamping it %s (its schema) and "
                "upgrading to %s",
                engine.url.render_as_string(hide_password=True),
                BASELINE,
                newest,
            )
            command.stamp(config, BASELINE)
            found = BASELINE
            if found == newest:
                return
        elif found is not None and found not in _known_revisions():
            raise SchemaError(
                f"index {engine.url.render_as_string(hide_password=True)} is at schema "
                f"revision {found}, which this release doesn't know (a newer release wrote "
                f"it?); this release goes up to {newest}"
            )
        log.info("upgrading the index schema from %s to %s", found or "nothing", newest)
        command.upgrade(config, "head")


def _known_revisions() -> set[str]:
    return {revision.revision for revision in _script().walk_revisions()}


def _lock(connection: Connection) -> None:
    """Held until the migrating transaction ends."""
    if connection.dialect.name == "postgresql":
        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_LOCK_KEY})
