"""The errors every PACS client raises, DIMSE and DICOMweb alike, and how they name the PACS.

``node.dimse`` and ``node.dicomweb`` raise these; ``priors``, ``studies`` and
``dispatch`` catch them without knowing which transport was used. The message always
starts with ``describe_pacs`` (or the URL of a destination that is only an URL), so a log
line or job record says which archive failed and over what.
"""

from __future__ import annotations

from node.config import PacsSettings

__all__ = ["DeliveryRefused", "PacsUnavailable", "describe_pacs"]


class PacsUnavailable(Exception):
    """The PACS could not be reached, refused the association or the service, failed a
    request, or didn't answer in time; the message names the PACS and the transport."""


class DeliveryRefused(Exception):
    """The PACS answered a store (C-STORE or STOW-RS) by refusing an instance; the message
    names the instance and its study."""


def describe_pacs(pacs: PacsSettings, transport: str) -> str:
    """How errors name a PACS: its AE, address or URL, and the transport used."""
    if transport.endswith("-RS"):
        return f"PACS {pacs.ae_title} at {pacs.dicomweb_url} ({transport})"
    return f"PACS {pacs.ae_title} at {pacs.host}:{pacs.port} ({transport})"
