"""A worker keeps freed memory while it works and hands it back once idle.

Run in a fresh interpreter: the allocator settings are process-wide, and the figures are
that process's resident memory read from /proc.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

# 400 blocks of 1 MB, each under the 32 MB size that would get its own mapping, so they
# live in glibc's heap; freed, they stay there (under the 1 GB trim threshold) until
# malloc_trim hands them back.
_SCRIPT = """
import json, threading, time
from node.pipeline.memory import (
    _resident_mib, keep_freed_memory, return_freed_memory_when_idle,
)

keep_freed_memory()
start = _resident_mib()
blocks = [bytes([n % 251]) * (1024 * 1024) for n in range(400)]
filled = _resident_mib()
del blocks
freed = _resident_mib()
stop = threading.Event()
return_freed_memory_when_idle(stop, idle_seconds=0.6, check_every=0.2)
busy_until = time.monotonic() + 1.5
while time.monotonic() < busy_until:  # a job in hand: nothing is handed back
    sum(range(10000))
busy = _resident_mib()
time.sleep(1.5)
idle = _resident_mib()
stop.set()
print(json.dumps(dict(start=start, filled=filled, freed=freed, busy=busy, idle=idle)))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator")
def test_freed_memory_is_kept_while_busy_and_handed_back_when_idle() -> None:
    done = subprocess.run(
        [sys.executable, "-c", _SCRIPT], capture_output=True, text=True, timeout=60, check=True
    )
    mib = json.loads(done.stdout.strip().splitlines()[-1])
    assert mib["filled"] - mib["start"] > 350, mib
    # Kept for the next job: freeing 400 MB gives back almost none of it ...
    assert mib["freed"] - mib["start"] > 350, mib
    assert mib["busy"] - mib["start"] > 350, mib
    # ... until the process has been idle, when it goes back to the system.
    assert mib["idle"] - mib["start"] < 50, mib
