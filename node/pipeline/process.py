"""Worker processes: the model runs outside the process that receives, so ingest never waits on it.

Each worker process loads its own engine, claims jobs from the shared index and dies with
its parent (a SIGKILLed node leaves no orphan holding jobs). Its job slots run their tasks
in task processes of their own (node.pipeline.offload) and ask its one engine. With
``model.batch_size`` > 1 it runs that many jobs at once on its one model, their requests
batched together, and ``model.prepare_ahead`` more jobs are read and prepared while the
model answers.
"""

from __future__ import annotations

import ctypes
import logging
import multiprocessing
import os
import signal
import threading
from multiprocessing.context import SpawnProcess
from multiprocessing.synchronize import Event

from node.config import Settings
from node.logs import configure_logging
from node.pipeline.memory import (
    keep_freed_memory,
    return_freed_memory_when_idle,
    settle_long_lived_objects,
)
from node.pipeline.offload import EngineServer, TaskProcesses
from node.pipeline.worker import Worker
from node.store.index import Index
from node.store.wakeup import JobWakeups

log = logging.getLogger(__name__)

PR_SET_PDEATHSIG = 1
WORKER_NICENESS = 10


def die_with_parent(parent_pid: int) -> None:
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        pass  # not Linux: the watcher thread below still ends us

    def watch() -> None:
        while True:
            if os.getppid() != parent_pid:
                os._exit(1)
            threading.Event().wait(1.0)

    threading.Thread(target=watch, daemon=True, name="parent-watch").start()


def worker_main(
    settings: Settings, number: int, parent_pid: int, ready: Event, verbose: bool
) -> None:
    keep_freed_memory()  # before any thread: a thread's first allocation takes an arena
    die_with_parent(parent_pid)
    # Receiving comes first: a PACS waits on every C-STORE, while a job can wait a moment.
    # Only matters when the CPU is short, as on a small host while a CT is prepared.
    os.nice(WORKER_NICENESS)
    configure_logging(verbose, log_phi=settings.node.log_phi)
    # Stop on SIGTERM (from the parent, or a service manager signalling the whole group)
    # after the job in hand; Ctrl-C in a terminal is the parent's to handle. The stop flag
    # is local: a shared multiprocessing.Event deadlocks its setter if a process dies
    # while waiting on it.
    stop = threading.Event()
    wakeups = JobWakeups(settings.node.resolved_database_url)

    def stop_after_this_job(_signum: int, _frame: object) -> None:
        stop.set()
        wakeups.wake()

    signal.signal(signal.SIGTERM, stop_after_this_job)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    import torch  # imported here, never in the receiving process

    from node.inference.batching import BatchingEngine
    from node.inference.engine import load_engine

    if not torch.cuda.is_available():
        # On a CPU-only host leave one core to the process that receives.
        torch.set_num_threads(max(1, (os.cpu_count() or 1) - 1))

    try:
        engine = load_engine(settings.model, settings.node.data_dir)
        if settings.model.engine == "test":
            from node.inference.engine import TransformersEngine
            from node.testing.standin import stand_in_from_environment

            assert isinstance(engine, TransformersEngine)
            engine = stand_in_from_environment(engine) or engine  # benchmarks only
    except Exception as e:
        log.critical("worker %d: the model could not be loaded: %s", number, e)
        raise SystemExit(3) from e
    index = Index(settings.node.resolved_database_url)
    if settings.model.engine == "openai":
        # The server batches; keep as many jobs in flight as requests may be.
        slots = settings.model.concurrency
    else:
        # One model: batch_size jobs' requests answered together, prepare_ahead more jobs
        # read and prepared on the CPU meanwhile, each on its own thread.
        slots = settings.model.batch_size + settings.model.prepare_ahead
        if slots > 1:
            engine = BatchingEngine(
                engine,
                max_batch=settings.model.batch_size,
                wait_seconds=settings.model.batch_wait_ms / 1000,
            )
    settle_long_lived_objects()
    return_freed_memory_when_idle(stop)
    # Each slot's task in a process of its own, the model answering them all from here;
    # or, on a small machine, each on its slot's thread.
    server, tasks = None, None
    if settings.node.uses_task_processes:
        server = EngineServer(engine)
        tasks = TaskProcesses(server, slots, verbose=verbose, log_phi=settings.node.log_phi)
        tasks.start()
    ready.set()
    threads = [
        threading.Thread(
            target=Worker(settings, index, engine, tasks, number=number, slot=slot).run,
            args=(stop, wakeups),
            name=f"jobs-{number}.{slot}",
        )
        for slot in range(slots)
    ]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        if tasks is not None:
            tasks.close()
        if server is not None:
            server.close()
        wakeups.close()
        index.close()


def start_worker(settings: Settings, number: int, verbose: bool) -> tuple[SpawnProcess, Event]:
    context = multiprocessing.get_context("spawn")
    ready = context.Event()
    process = context.Process(
        target=worker_main,
        args=(settings, number, os.getpid(), ready, verbose),
        name=f"worker-{number}",
        # Not daemonic: it starts task processes of its own. It still dies with the node
        # (die_with_parent), and NodeService.stop ends it.
        daemon=False,
    )
    process.start()
    return process, ready
