"""The one way the node opens a DICOMweb client, and turns its failures into PACS errors.

Every QIDO-RS, WADO-RS and STOW-RS request the node makes starts from ``dicomweb_client``,
inside ``unavailable_on_failure``: whatever ``requests`` or dicomweb-client raise (no
connection, a timeout, an HTTP error status, a body that doesn't parse) becomes one
``PacsUnavailable`` naming where it was going.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from dicomweb_client.api import DICOMwebClient

from node.pacs_errors import DeliveryRefused, PacsUnavailable

__all__ = ["dicomweb_client", "unavailable_on_failure"]


def dicomweb_client(url: str, *, timeout: float) -> DICOMwebClient:
    """A client for the DICOMweb service at ``url``, each request bounded by ``timeout``."""
    client = DICOMwebClient(url=url, timeout=timeout)
    # No retries inside requests: the caller's own backoff (the job's, the watch's)
    # decides when to try again, and its deadline means what it says.
    client.set_http_retry_params(retry=False)
    return client


@contextmanager
def unavailable_on_failure(where: str) -> Iterator[None]:
    """Raise what fails inside as ``PacsUnavailable("{where}: {error}")``; the node's own
    PACS errors pass through unchanged."""
    try:
        yield
    except (PacsUnavailable, DeliveryRefused):
        raise
    except Exception as e:  # requests' connection and HTTP errors, whatever the transport
        raise PacsUnavailable(f"{where}: {e}") from e
