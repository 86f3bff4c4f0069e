"""STOW-RS: results to a DICOMweb archive, each instance checked in the response."""

from __future__ import annotations

from collections.abc import Sequence

from pydicom import Dataset

from node.dicomweb.client import dicomweb_client, unavailable_on_failure
from node.pacs_errors import DeliveryRefused


def store_instances(datasets: Sequence[Dataset], *, url: str, timeout: float) -> None:
    """POST ``datasets`` to ``url``/studies; raises unless the archive stored every one.

    Raises PacsUnavailable (no answer, an HTTP error) or DeliveryRefused (the answer lists
    an instance as failed, or doesn't confirm one).
    """
    client = dicomweb_client(url, timeout=timeout)
    with unavailable_on_failure(f"STOW-RS to {url}"):
        response = client.store_instances(datasets)
    failed = [
        f"{item.get('ReferencedSOPInstanceUID', '?')} "
        f"(failure reason {item.get('FailureReason', '?')})"
        for item in response.get("FailedSOPSequence", [])
    ]
    if failed:
        raise DeliveryRefused(f"STOW-RS to {url} refused {', '.join(failed)}")
    stored = {
        str(item.ReferencedSOPInstanceUID) for item in response.get("ReferencedSOPSequence", [])
    }
    missing = [str(ds.SOPInstanceUID) for ds in datasets if str(ds.SOPInstanceUID) not in stored]
    if response and missing:
        raise DeliveryRefused(f"STOW-RS to {url} did not confirm {', '.join(missing)}")
