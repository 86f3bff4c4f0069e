"""Result delivery. Results are written to disk first so a PACS outage loses nothing.

Each destination is tried on its own and remembered once it has the results, so a
retry re-sends the same files (same SOP Instance UIDs) only where they are missing.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from pydicom import Dataset, dcmread

from node.config import Output, PacsSettings, Settings
from node.dicomweb.stow import store_instances
from node.dimse import scu
from node.pacs_errors import DeliveryRefused, PacsUnavailable
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


def output_of(ds: Dataset) -> Output | None:
    return _OUTPUT_OF_SOP_CLASS.get(ds.SOPClassUID.keyword)


def save_results(results: Sequence[Dataset], directory: Path) -> list[str]:
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for number, ds in enumerate(results, start=1):
        kind = output_of(ds) or "result"
        paths.append(str(write_dataset(ds, directory / f"{number:02d}-{kind}.dcm")))
    return paths


@dataclass(frozen=True)
class Target:
    """One place results go: ``pacs``, or a named entry of ``delivery.destinations``."""

    name: str
    outputs: frozenset[Output]
    dimse: PacsSettings | None = None  # C-STORE when set
    dicomweb_url: str | None = None  # STOW-RS when set (preferred)
    timeout_seconds: float = 30.0

    @property
    def protocol(self) -> str:
        """How results go there, as the audit trail names it."""
        return "STOW-RS" if self.dicomweb_url is not None else "C-STORE"

    def describe(self) -> str:
        if self.dicomweb_url is not None:
            return f"{self.name} (STOW-RS {self.dicomweb_url})"
        assert self.dimse is not None
        return f"{self.name} ({self.dimse.ae_title} at {self.dimse.host}:{self.dimse.port})"


def targets(settings: Settings) -> list[Target]:
    """Every destination the configuration names, ``pacs`` first."""
    found: list[Target] = []
    outputs = frozenset(settings.outputs)
    if settings.pacs is not None:
        pacs = settings.pacs
        found.append(Target("pacs", outputs, pacs, pacs.dicomweb_url, pacs.timeout_seconds))
    for d in settings.delivery.destinations:
        dimse = None
        if d.ae_title is not None and d.host is not None and d.port is not None:
            dimse = PacsSettings(
                ae_title=d.ae_title, host=d.host, port=d.port, timeout_seconds=d.timeout_seconds
            )
        wanted = frozenset(d.outputs) if d.outputs is not None else outputs
        found.append(Target(d.name, wanted, dimse, d.dicomweb_url, d.timeout_seconds))
    return found


def send(paths: Sequence[str], target: Target, *, calling_ae: str) -> list[str]:
    """Send the result files ``target`` wants; returns their SOP Instance UIDs.

    Raises DeliveryFailed naming the target.
    """
    datasets = [ds for ds in (dcmread(p) for p in paths) if output_of(ds) in target.outputs]
    if not datasets:
        return []
    try:
        if target.dicomweb_url is not None:
            store_instances(datasets, url=target.dicomweb_url, timeout=target.timeout_seconds)
        else:
            assert target.dimse is not None
            scu.store(datasets, pacs=target.dimse, calling_ae=calling_ae)
    except (PacsUnavailable, DeliveryRefused) as e:
        raise DeliveryFailed(target.name, str(e)) from e
    log.info(
        "sent %d result objects for study %s to %s",
        len(datasets),
        datasets[0].StudyInstanceUID,
        target.describe(),
    )
    return [str(ds.SOPInstanceUID) for ds in datasets]


class DeliveryFailed(Exception):
    """A destination could not take the results; the message names it."""

    def __init__(self, target: str, reason: str) -> None:
        super().__init__(f"{target}: {reason}")
        self.target = target
