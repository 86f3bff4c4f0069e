"""Tasks run in their own processes; their model calls come back to the worker's one model.

A job's own work (reading and windowing the DICOM, building the SR) is Python that holds
the GIL: in the process that holds the model it could not keep pace with a GPU
(bench/gpu_feed.py). So each job slot of a worker process has a task process that runs
the task (node.pipeline.tasks); the task's ``engine.generate(prompt)`` is sent over a
local socket to the worker, whose engine answers it (batched with other slots' requests,
its images resized on the connection's thread while the model answers another).
Saving, filing and delivering the results stay with the worker's job thread.

A task process that dies (a decoder crash, the OOM killer) fails only the job it ran,
which is retried; the slot gets a new process.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import secrets
import tempfile
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from multiprocessing.connection import Client, Connection, Listener
from pathlib import Path

from node.inference.request import Engine, EngineError, Prompt
from node.logs import configure_logging
from node.pipeline.tasks import TaskInput, TaskOutcome, run_task

log = logging.getLogger(__name__)

__all__ = ["EngineServer", "RemoteEngine", "TaskProcesses"]


class EngineServer:
    """The worker's engine, answering the model calls of its task processes."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.authkey = secrets.token_bytes(32)
        # A short path: a Unix socket's name must fit in 108 bytes.
        self._dir = Path(tempfile.mkdtemp(prefix="mgn-engine-"))
        self.address = str(self._dir / "s")
        self._listener = Listener(self.address, family="AF_UNIX", authkey=self.authkey)
        threading.Thread(target=self._accept, name="engine-server", daemon=True).start()

    def close(self) -> None:
        self._listener.close()
        Path(self.address).unlink(missing_ok=True)
        self._dir.rmdir()

    def _accept(self) -> None:
        while True:
            try:
                conn = self._listener.accept()
            except OSError:
                return  # closed
            except Exception as e:  # a client that failed the handshake
                log.warning("engine server: refused a connection: %s", e)
                continue
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: Connection) -> None:
        with conn:
            while True:
                try:
                    prompt = conn.recv()
                except (EOFError, OSError):
                    return  # the task process is gone
                try:
                    answer: str | BaseException = self.engine.generate(prompt)
                except Exception as e:
                    answer = EngineError(f"{type(e).__name__}: {e}")
                try:
                    conn.send(answer)
                except (OSError, ValueError):
                    return


class RemoteEngine:
    """The worker's engine, as a task process sees it: one call at a time."""

    def __init__(self, conn: Connection, label: str, is_test_model: bool) -> None:
        self._conn = conn
        self.label = label
        self.is_test_model = is_test_model

    def generate(self, prompt: Prompt) -> str:
        try:
            self._conn.send(prompt)
            answer = self._conn.recv()
        except (EOFError, OSError) as e:
            raise EngineError(f"{self.label}: the worker's engine is gone: {e}") from e
        if isinstance(answer, BaseException):
            raise answer
        return str(answer)


_engine: RemoteEngine | None = None  # the task process's one connection
_StartWith = tuple[str, bytes, str, bool, bool, bool, int]  # _start's arguments


def _start(
    address: str,
    authkey: bytes,
    label: str,
    is_test_model: bool,
    verbose: bool,
    log_phi: bool,
    parent_pid: int,
) -> None:
    from node.pipeline.memory import (
        keep_freed_memory,
        return_freed_memory_when_idle,
        settle_long_lived_objects,
    )
    from node.pipeline.process import die_with_parent

    keep_freed_memory()  # before any thread: a thread's first allocation takes an arena
    die_with_parent(parent_pid)
    multiprocessing.current_process().name = f"tasks-of-{parent_pid}"  # in the log lines
    configure_logging(verbose, log_phi=log_phi)
    global _engine
    _engine = RemoteEngine(Client(address, authkey=authkey), label, is_test_model)
    settle_long_lived_objects()  # the task code is imported by now
    return_freed_memory_when_idle(threading.Event())  # until the process ends


def _started() -> int:
    time.sleep(0.2)  # long enough that each warm-up call takes a process of its own
    return os.getpid()


def _run(job: TaskInput) -> TaskOutcome:
    assert _engine is not None, "task process started without its engine"
    return run_task(job, _engine)


class TaskProcesses:
    """``slots`` processes that run tasks against ``server``'s engine."""

    def __init__(self, server: EngineServer, slots: int, *, verbose: bool, log_phi: bool) -> None:
        engine = server.engine
        # What each new task process is started with: where and how to reach the engine.
        self._start_with: _StartWith = (
            *(server.address, server.authkey, engine.label, engine.is_test_model),
            *(verbose, log_phi, os.getpid()),
        )
        self._slots = slots
        self._lock = threading.Lock()
        self._pool = self._new_pool()

    def _new_pool(self) -> ProcessPoolExecutor:
        context = multiprocessing.get_context("spawn")
        start, args = _start, self._start_with
        return ProcessPoolExecutor(self._slots, context, initializer=start, initargs=args)

    def start(self) -> None:
        """Start every slot's process now (each imports the task code, about a second),
        not when the first job arrives."""
        for future in [self._pool.submit(_started) for _ in range(self._slots)]:
            future.result()

    def run(self, job: TaskInput) -> TaskOutcome:
        """The task's outcome; its exceptions (InputError included) as the task raised them."""
        pool = self._pool
        try:
            return pool.submit(_run, job).result()
        except BrokenProcessPool as e:
            with self._lock:
                if self._pool is pool:  # the first slot to notice replaces it
                    pool.shutdown(wait=False, cancel_futures=True)
                    self._pool = self._new_pool()
            raise RuntimeError(f"the task process running the {job.task} task died: {e}") from e

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
