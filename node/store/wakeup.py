"""Waking the workers when a job is queued, so they claim it at once rather than at a poll.

PostgreSQL: the transaction that queues a job sends ``NOTIFY medgemma_jobs``; every
process LISTENing hears it at commit, on any host. SQLite (one host): each waiting process
binds a Unix datagram socket in a directory named after the database file, and whoever
queues a job sends a byte to each one there once the write has committed; a socket whose
process is gone is removed. Either way the workers still poll slowly as a safety net, so
a lost wake-up costs seconds, never a job.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import socket
import tempfile
import threading
from pathlib import Path

from sqlalchemy import make_url

log = logging.getLogger(__name__)

__all__ = ["CHANNEL", "JobWakeups", "announce_sqlite", "wake_dir"]

CHANNEL = "medgemma_jobs"
_RECONNECT_SECONDS = 5.0


def wake_dir(database_url: str) -> Path | None:
    """Where a SQLite index's waiting processes keep their sockets; None for PostgreSQL
    or an in-memory database. Under the temporary directory, as a socket's path must stay
    short; named by a digest of the database's full path, so one node's processes meet."""
    url = make_url(database_url)
    if url.get_backend_name() != "sqlite" or url.database in (None, "", ":memory:"):
        return None
    where = str(Path(str(url.database)).resolve())
    digest = hashlib.sha256(where.encode()).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / f"medgemma-node-wake-{digest}"


def announce_sqlite(directory: Path) -> None:
    """Send one byte to every process waiting on ``directory``; never raises."""
    try:
        names = list(directory.iterdir())
    except OSError:
        return  # nobody has ever waited: no directory
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sender:
        sender.setblocking(False)
        for name in names:
            try:
                sender.sendto(b"j", str(name))
            except BlockingIOError:
                pass  # its queue is full: it has wake-ups to read already
            except (ConnectionRefusedError, FileNotFoundError):
                with contextlib.suppress(OSError):
                    name.unlink()  # its process is gone
            except OSError as e:
                log.debug("wake-up to %s not sent: %s", name, e)


class JobWakeups:
    """One process's ear for queued jobs: :meth:`wait` returns when one may be waiting."""

    def __init__(self, database_url: str) -> None:
        self._url = database_url
        self._changed = threading.Condition()
        self._generation = 0
        self._closed = threading.Event()
        self._socket_path: Path | None = None
        self._socket: socket.socket | None = None
        directory = wake_dir(database_url)
        if directory is not None:
            self._socket = self._bind(directory)
            target = self._hear_sqlite
        else:
            target = self._hear_postgresql
        threading.Thread(target=target, name="job-wakeups", daemon=True).start()

    @property
    def generation(self) -> int:
        """Read before looking for work; :meth:`wait` with it then misses no wake-up."""
        with self._changed:
            return self._generation

    def wait(self, seen: int, timeout: float) -> None:
        """Until a wake-up newer than ``seen`` arrives, or ``timeout`` seconds pass."""
        with self._changed:
            self._changed.wait_for(lambda: self._generation != seen, timeout=timeout)

    def wake(self) -> None:
        """Wake this process's waiters (a stop, or work queued in this process)."""
        with self._changed:
            self._generation += 1
            self._changed.notify_all()

    def close(self) -> None:
        self._closed.set()
        if self._socket is not None:
            self._socket.close()
        if self._socket_path is not None:
            with contextlib.suppress(OSError):
                self._socket_path.unlink()
        self.wake()

    def _bind(self, directory: Path) -> socket.socket | None:
        try:
            directory.mkdir(mode=0o700, exist_ok=True)
            path = directory / f"{os.getpid()}-{id(self):x}"
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            ear = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            ear.bind(str(path))
        except OSError as e:
            log.warning("job wake-ups off (polling only): can't bind in %s: %s", directory, e)
            return None
        self._socket_path = path
        return ear

    def _hear_sqlite(self) -> None:
        ear = self._socket
        while ear is not None and not self._closed.is_set():
            try:
                ear.recv(64)
            except OSError:
                return  # closed
            self.wake()

    def _hear_postgresql(self) -> None:
        import psycopg

        conninfo = make_url(self._url).set(drivername="postgresql")
        dsn = conninfo.render_as_string(hide_password=False)
        complained = False
        while not self._closed.is_set():
            try:
                with psycopg.connect(dsn, autocommit=True) as conn:
                    conn.execute(f"LISTEN {CHANNEL}")
                    complained = False
                    self.wake()  # anything queued while not listening
                    while not self._closed.is_set():
                        for _ in conn.notifies(timeout=1.0):
                            self.wake()
            except psycopg.Error as e:
                if not complained:
                    log.warning("job wake-ups paused (polling only): %s", e)
                    complained = True
                self._closed.wait(_RECONNECT_SECONDS)
