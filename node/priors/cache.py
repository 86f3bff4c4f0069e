"""Prior studies on disk: one directory per study, reused once complete, aged out.

UIDs come from the PACS, so they never become path components as they are: the
directory is a hash of the Study Instance UID and each file a hash of its SOP
Instance UID. A study counts as complete only once its marker file is written,
after the retrieval finished; a directory without one is a half-done retrieval and
is emptied before the next try.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path

__all__ = ["PriorCache", "instance_file_name", "write_instance"]

log = logging.getLogger(__name__)

COMPLETE_MARKER = ".complete"
_PARTIAL_PREFIX = ".incoming-"
_SECONDS_PER_DAY = 86400.0


def _digest(uid: str) -> str:
    return hashlib.sha256(uid.strip().encode("ascii", "replace")).hexdigest()[:32]


def instance_file_name(sop_instance_uid: str) -> str:
    return f"{_digest(sop_instance_uid)}.dcm"


def write_instance(directory: Path, sop_instance_uid: str, data: bytes | memoryview) -> Path:
    """Write one Part 10 file atomically (temp file, rename) and return its path.

    No fsync: a cache entry lost in a crash is fetched again, and the marker is what
    says a study is complete.
    """
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / instance_file_name(sop_instance_uid)
    fd, tmp_name = tempfile.mkstemp(dir=directory, prefix=_PARTIAL_PREFIX, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    return path


class PriorCache:
    """Directories of retrieved prior studies under ``root``."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def study_dir(self, study_uid: str) -> Path:
        """Where the instances of ``study_uid`` live (also the C-MOVE filing place)."""
        return self.root / _digest(study_uid)

    def is_complete(self, study_uid: str) -> bool:
        return (self.study_dir(study_uid) / COMPLETE_MARKER).is_file()

    def files(self, study_uid: str) -> list[Path]:
        """The study's instance files (complete ones only; temp files are left out)."""
        directory = self.study_dir(study_uid)
        if not directory.is_dir():
            return []
        return sorted(p for p in directory.glob("*.dcm") if not p.name.startswith("."))

    def mark_complete(self, study_uid: str) -> None:
        directory = self.study_dir(study_uid)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / COMPLETE_MARKER).write_text(f"{len(self.files(study_uid))}\n")

    def discard(self, study_uid: str) -> None:
        """Forget a study (a failed or stale retrieval)."""
        shutil.rmtree(self.study_dir(study_uid), ignore_errors=True)

    def prepare(self, study_uid: str) -> Path:
        """An empty directory for a fresh retrieval of an incomplete study."""
        if not self.is_complete(study_uid):
            self.discard(study_uid)
        directory = self.study_dir(study_uid)
        directory.mkdir(parents=True, exist_ok=True)
        return directory

    def clean_older_than(self, days: float) -> int:
        """Remove studies last completed (or, if never completed, written) over ``days`` ago;
        returns how many were removed."""
        if days < 0:
            raise ValueError(f"days must be ≥ 0, got {days}")
        if not self.root.is_dir():
            return 0
        cutoff = time.time() - days * _SECONDS_PER_DAY
        removed = 0
        for directory in self.root.iterdir():
            if not directory.is_dir():
                continue
            marker = directory / COMPLETE_MARKER
            stamp = (marker if marker.exists() else directory).stat().st_mtime
            if stamp < cutoff:
                shutil.rmtree(directory, ignore_errors=True)
                removed += 1
        if removed:
            log.info("priors cache: removed %d study(ies) older than %g day(s)", removed, days)
        return removed
