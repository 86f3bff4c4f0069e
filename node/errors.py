"""One failure told in the caller's words: the message kept, the cause chained."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager


@contextmanager
def reraised_as(caught: type[Exception], raised: Callable[[str], Exception]) -> Iterator[None]:
    """Raise ``raised(message)`` from any ``caught`` the block raises."""
    try:
        yield
    except caught as e:
        raise raised(str(e)) from e
