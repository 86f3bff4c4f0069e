"""How the node's long-running processes use memory: freed blocks kept for the next job
while work flows, handed back to the system once the process has been idle a while, and
the objects that live as long as the process kept out of the collector's full passes."""

from __future__ import annotations

import ctypes
import gc
import logging
import os
import threading
import time

log = logging.getLogger(__name__)

# A process that has used under this share of a core for IDLE_SECONDS is idle: no job is
# being prepared or run on its CPU. (A job waiting that long on a served model or the PACS
# looks idle too; it then only pays the fault-in again.)
IDLE_CPU_SHARE = 0.05
IDLE_SECONDS = 60.0
_CHECK_EVERY = 5.0


def _libc() -> ctypes.CDLL | None:
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:
        return None  # not glibc: its allocator's defaults stand


def keep_freed_memory() -> None:
    """Let glibc reuse freed blocks of up to 32 MB instead of unmapping them: each model
    image is resized into a new 3 MB PIL image, and mapping those afresh meant a page
    fault per 4 KB page on every image, threads queueing on the kernel's lock. One
    arena for all threads: a job runs on whichever slot's thread claimed it, and with
    an arena each, memory the last CT freed sat in another thread's arena while this
    one faulted in its own (0.5–1 s a CT's 85 windowed slices, on a virtual machine
    that is slow to hand out pages). What this keeps is handed back when the process
    falls idle (return_freed_memory_when_idle)."""
    M_TRIM_THRESHOLD, M_MMAP_THRESHOLD, M_ARENA_MAX = -1, -3, -8  # noqa: N806 - glibc's names
    libc = _libc()
    if libc is None or not hasattr(libc, "mallopt"):
        return
    libc.mallopt(M_ARENA_MAX, 1)
    libc.mallopt(M_MMAP_THRESHOLD, 32 * 1024 * 1024)
    libc.mallopt(M_TRIM_THRESHOLD, 1024 * 1024 * 1024)


def _resident_mib() -> float:
    with open("/proc/self/statm") as statm:
        pages = int(statm.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def return_freed_memory_when_idle(
    stop: threading.Event,
    *,
    idle_seconds: float = IDLE_SECONDS,
    check_every: float = _CHECK_EVERY,
) -> threading.Thread:
    """Start a thread that hands the freed heap back to the system (``malloc_trim``) once
    the process has been idle ``idle_seconds``, then not again until it has worked.

    Kept while jobs flow (the next CT reuses the last one's gigabyte instead of faulting
    it in), a busy hour's memory would otherwise stay with an idle node all night. Idle
    is judged by the process's own CPU time, so no job code has to report to it. The
    cost: the first CT after an idle minute faults its memory in again (about 1 s more on
    the development VM, whose page faults are slow).
    """
    libc = _libc()
    trim = getattr(libc, "malloc_trim", None)

    def watch() -> None:
        cpu = time.process_time()
        idle_since = time.monotonic()
        trimmed = False
        while not stop.wait(check_every):
            now_cpu, now = time.process_time(), time.monotonic()
            if now_cpu - cpu > IDLE_CPU_SHARE * check_every:
                idle_since, trimmed = now, False
            elif not trimmed and now - idle_since >= idle_seconds and trim is not None:
                before = _resident_mib()
                trim(0)
                trimmed = True
                log.info(
                    "idle %.0f s: freed memory handed back (%.0f → %.0f MiB resident)",
                    now - idle_since, before, _resident_mib(),
                )
            cpu = time.process_time()

    thread = threading.Thread(target=watch, daemon=True, name="memory-return")
    thread.start()
    return thread


def settle_long_lived_objects() -> None:
    """Keep the collector's full passes off what stays for the process's life.

    torch, transformers and the model leave half a million objects that every full
    collection walks: 0.25 s holding the GIL, which a job paid at a random moment
    (reading 300 headers makes enough objects to set one off). Frozen after loading,
    they are never walked again; what jobs make is collected as before.
    """
    gc.collect()
    gc.freeze()
