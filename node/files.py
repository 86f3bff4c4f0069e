"""Files that appear complete or not at all: written beside their final name, then renamed.

A reader (a dispatcher watching a folder, someone opening a saved model input, a bench
report read while the run goes on) never sees half a file. ``durable`` adds what a
write that is acknowledged to a peer needs: the file and its directory entry fsynced.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

__all__ = ["atomic_file", "write_atomically"]

PARTIAL_SUFFIX = ".partial"


@contextmanager
def atomic_file(
    path: Path | str,
    *,
    durable: bool = False,
    prefix: str | None = None,
    suffix: str = PARTIAL_SUFFIX,
    mode: int = 0o666,
) -> Iterator[BinaryIO]:
    """A binary handle whose bytes replace ``path`` when the block ends without an error.

    The temporary file is a sibling (same file system, so the rename is atomic) named
    ``prefix`` + a random part + ``suffix``; ``prefix`` defaults to ``.<name>.``, hidden
    from a folder watcher. It is created with ``mode`` less the umask, as ``open`` would,
    and removed when the block raises. The directory must exist.
    """
    target = Path(path)
    directory = target.parent
    start = prefix if prefix is not None else f".{target.name}."
    partial = directory / f"{start}{secrets.token_hex(6)}{suffix}"
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as handle:
            yield handle
            if durable:
                handle.flush()
                os.fsync(handle.fileno())
        os.replace(partial, target)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    if durable:
        # The rename is only durable once the directory entry is.
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def write_atomically(path: Path | str, data: bytes | str, *, durable: bool = False) -> None:
    """Replace ``path`` with ``data`` (text is written as UTF-8) through :func:`atomic_file`."""
    with atomic_file(path, durable=durable) as handle:
        handle.write(data.encode("utf-8") if isinstance(data, str) else data)
