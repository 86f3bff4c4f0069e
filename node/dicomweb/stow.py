"""STOW-RS: results to a DICOMweb archive, each instance checked in the response."""

from __future__ import annotations

from collections.abc import Sequence

from dicomweb_client.api import DICOMwebClient
from pydicom import Dataset

from node.dimse.scu import DeliveryRefused, PacsUnavailable


def store_instances(datasets: Sequence[Dataset], *, url: str, timeout: float) -> None:
    """POST ``datasets`` to ``url``/studies; raises unless the archive stored every one."""
    client = DICOMwebClient(url=url, timeout=timeout)
    client.set_http_retry_params(retry=False)  # the job's own backoff decides when to retry
    try:
        response = client.store_instances(datasets)
    except Exception as e:  # connection refused, timeouts, HTTP 4xx/5xx from requests
        raise PacsUnavailable(f"STOW-RS to {url}: {e}") from e
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
