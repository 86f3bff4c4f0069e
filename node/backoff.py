"""One backoff: the wait after a run of failures doubles each time, up to a ceiling.

Used by the delivery retries (``DeliverySettings.wait_after``), the watch's polls of a
PACS that keeps failing, and the served engine's retries of one request.
"""

from __future__ import annotations

import math

__all__ = ["doubling_wait"]

# 2 ** 60 times any wait is longer than the node will run; a larger exponent would only
# overflow the float (the watch counts failed polls for as long as an outage lasts).
_MAX_DOUBLINGS = 60


def doubling_wait(first: float, failures: int, *, ceiling: float = math.inf) -> float:
    """Seconds to wait after the ``failures``-th failure in a row: ``first`` after the
    first (and before any), twice that after the second, and so on, at most ``ceiling``."""
    doublings = min(max(failures - 1, 0), _MAX_DOUBLINGS)
    return float(min(first * 2.0**doublings, ceiling))
