"""The index database: its engine, sessions, and one writer at a time on SQLite.

:class:`Database` is what the index's parts share (:class:`node.store.jobs.JobQueue`,
:class:`node.store.index.Index`); opening one brings the schema to this release's.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, make_url
from sqlalchemy.orm import Session, sessionmaker

from node.store import schema

__all__ = ["Database", "make_engine"]


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    # WAL + NORMAL: a committed row survives a killed process; the spool is reconciled
    # into the index at start-up, so a power loss can't lose an acknowledged instance either.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        database = make_url(url).database
        if database and database != ":memory:":
            Path(database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    return create_engine(url, pool_pre_ping=True)


class Database:
    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = make_engine(url)
        self.is_sqlite = self.engine.dialect.name == "sqlite"
        schema.upgrade(self.engine)  # a no-op once the database is at this release's schema
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        # SQLite has one writer at a time anyway; serialising writers in-process avoids
        # busy-waiting between the SCP's association threads.
        self._write_lock = threading.Lock() if self.is_sqlite else None

    @contextmanager
    def session(self) -> Iterator[Session]:
        with self._sessions() as session:
            yield session

    @contextmanager
    def _write_guard(self) -> Iterator[None]:
        if self._write_lock is None:
            yield
            return
        with self._write_lock:
            yield

    @contextmanager
    def writing(self) -> Iterator[Session]:
        with self._write_guard(), self._sessions.begin() as session:
            yield session

    def close(self) -> None:
        self.engine.dispose()
