"""Durable instance files: on disk (fsynced, atomically renamed) before anything is acknowledged.

UIDs come from the wire, so they never become path components as they are: each is
hashed, which also keeps directory fan-out even.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path


def _digest(uid: str) -> str:
    return hashlib.sha256(uid.encode("ascii", "replace")).hexdigest()[:32]


class Spool:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)

    def path_for(self, study_uid: str, series_uid: str, sop_uid: str) -> Path:
        study = _digest(study_uid)
        return self.root / study[:2] / study / _digest(series_uid) / f"{_digest(sop_uid)}.dcm"

    def write(self, path: Path, *chunks: bytes | memoryview) -> None:
        """Write ``chunks`` to ``path`` so that after return it survives a crash or power loss."""
        directory = path.parent
        directory.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(dir=directory, prefix=".incoming-", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as handle:
                for chunk in chunks:
                    handle.write(chunk)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp_name, path)
        except BaseException:
            Path(tmp_name).unlink(missing_ok=True)
            raise
        # The rename is only durable once the directory entry is.
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    def files(self) -> list[Path]:
        """Every complete instance file (used to reconcile the index after a crash)."""
        return sorted(self.root.glob("*/*/*/*.dcm"))

    def remove_partial_files(self) -> int:
        """Temp files left by a crash mid-write were never acknowledged: delete them."""
        count = 0
        for tmp in self.root.glob("*/*/*/.incoming-*.tmp"):
            tmp.unlink(missing_ok=True)
            count += 1
        return count
