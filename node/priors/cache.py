"""Prior studies on disk: one directory per study, reused once complete, aged out.

UIDs come from the PACS, so they never become path components as they are: the
directory is a hash of the Study Instance UID and each file a hash of its SOP
Instance UID. A study counts as complete only once its marker file is written,
after the retrieval finished; a directory without one is a half-done retrieval and
is emptied before the next try.

The instances a C-MOVE of the node's own delivers come in through the SCP, which hands
them to :meth:`PriorCache.file_moved` (plugged in by ``node/service.py``): written into
the directory of a retrieval that waits for them, refused otherwise.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path

from node.store.index import Filed
from node.store.ingest import WireInstance, read_wire_header
from node.store.meta import UnreadableData
from node.store.outcome import IngestOutcome, Refusal, Refused, Stored
from node.store.part10 import part10_prefix

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

    def file_moved(self, instance: WireInstance) -> IngestOutcome:
        """Write a C-MOVE'd instance into its study's directory, if a retrieval waits for it.

        Only a retrieval in progress prepares its directory: a late or unasked-for instance
        is refused rather than filed as new work.
        """
        sop_class, sop_uid = instance.sop_class_uid, instance.sop_instance_uid
        try:
            header = read_wire_header(instance.dataset, instance.transfer_syntax)
        except UnreadableData as e:
            return Refused(Refusal.NOT_DICOM, str(e), sop_class, sop_uid)
        study_uid = str(header.get("StudyInstanceUID", ""))
        directory = self.study_dir(study_uid)
        if not directory.is_dir():
            message = f"no retrieval of study {study_uid} is waiting"
            return Refused(Refusal.PRIOR_NOT_WAITING, message, sop_class, sop_uid)
        filed = Filed.DUPLICATE if (directory / instance_file_name(sop_uid)).exists() else Filed.NEW
        prefix = part10_prefix(sop_class, sop_uid, instance.transfer_syntax, instance.calling_ae)
        try:
            write_instance(directory, sop_uid, prefix + instance.dataset.getvalue())
        except OSError as e:
            message = f"the priors cache can't take it: {e.strerror or e}"
            return Refused(Refusal.NOT_FILED, message, sop_class, sop_uid)
        return Stored(sop_class, sop_uid, study_uid, filed)

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
