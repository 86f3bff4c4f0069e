"""Durable instance files: on disk (fsynced, atomically renamed) before anything is acknowledged.

UIDs come from the wire, so they never become path components as they are: each is
hashed, which also keeps directory fan-out even.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from node.files import atomic_file

# What a write in progress is called; a crash leaves it, and start-up removes it.
PARTIAL_PREFIX, PARTIAL_SUFFIX = ".incoming-", ".tmp"


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
        path.parent.mkdir(parents=True, exist_ok=True)
        # 0600: a patient's data, readable by the node alone (mkstemp's mode, kept).
        with atomic_file(
            path, durable=True, prefix=PARTIAL_PREFIX, suffix=PARTIAL_SUFFIX, mode=0o600
        ) as handle:
            for chunk in chunks:
                handle.write(chunk)

    def files(self) -> list[Path]:
        """Every complete instance file (used to reconcile the index after a crash)."""
        return sorted(self.root.glob("*/*/*/*.dcm"))

    def remove_partial_files(self) -> int:
        """Temp files left by a crash mid-write were never acknowledged: delete them."""
        count = 0
        for tmp in self.root.glob(f"*/*/*/{PARTIAL_PREFIX}*{PARTIAL_SUFFIX}"):
            tmp.unlink(missing_ok=True)
            count += 1
        return count
