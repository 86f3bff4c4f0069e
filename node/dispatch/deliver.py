"""Result delivery. Results are written to disk first so a PACS outage loses nothing."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from pydicom import Dataset, dcmread

from node.config import Output, Settings
from node.dimse import scu
from node.results.files import write_dataset

log = logging.getLogger(__name__)

# Which configured output each result object belongs to, by its SOP class keyword.
_OUTPUT_OF_SOP_CLASS = {
    "ComprehensiveSRStorage": Output.SR,
    "Comprehensive3DSRStorage": Output.SR,
    "EnhancedSRStorage": Output.SR,
    "GrayscaleSoftcopyPresentationStateStorage": Output.GSPS,
    "SecondaryCaptureImageStorage": Output.SC,
}


def save_results(results: Sequence[Dataset], directory: Path) -> list[str]:
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for number, ds in enumerate(results, start=1):
        kind = _OUTPUT_OF_SOP_CLASS.get(ds.SOPClassUID.keyword, "result")
        paths.append(str(write_dataset(ds, directory / f"{number:02d}-{kind}.dcm")))
    return paths


def deliver(paths: Sequence[str], settings: Settings) -> int:
    """Send the configured outputs among ``paths`` to the PACS; returns how many were sent."""
    if settings.pacs is None:
        return 0
    wanted = set(settings.outputs)
    datasets = [dcmread(p) for p in paths]
    to_send = [ds for ds in datasets if _OUTPUT_OF_SOP_CLASS.get(ds.SOPClassUID.keyword) in wanted]
    if to_send:
        scu.store(to_send, pacs=settings.pacs, calling_ae=settings.node.ae_title)
        log.info(
            "sent %d result objects for study %s to %s",
            len(to_send),
            to_send[0].StudyInstanceUID,
            settings.pacs.ae_title,
        )
    return len(to_send)
