"""Writing result objects to disk as DICOM Part 10 files."""

from __future__ import annotations

import logging
from pathlib import Path

from pydicom import Dataset

from node.files import atomic_file

__all__ = ["write_dataset"]

logger = logging.getLogger(__name__)


def write_dataset(ds: Dataset, path: Path | str) -> Path:
    """Write ``ds`` to ``path`` as a Part 10 file and return the path.

    Written to a sibling temporary file and renamed, so a dispatcher watching
    the folder never picks up half a file. The dataset must carry File Meta
    Information (highdicom objects do); pydicom refuses otherwise.
    """
    target = Path(path)
    with atomic_file(target) as handle:
        ds.save_as(handle, enforce_file_format=True)
    logger.debug("wrote %s to %s", ds.get("SOPInstanceUID", "?"), target)
    return target
