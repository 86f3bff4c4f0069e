"""QIDO-RS: how many instances the PACS holds for a study."""

from __future__ import annotations

from dicomweb_client.api import DICOMwebClient
from pydicom.tag import Tag

from node.dimse.scu import PacsUnavailable

_COUNT_TAG = f"{Tag('NumberOfStudyRelatedInstances'):08X}"


def count_study_instances(study_uid: str, *, url: str, timeout: float) -> int | None:
    """NumberOfStudyRelatedInstances from QIDO-RS; None if the PACS doesn't have the study."""
    client = DICOMwebClient(url=url, timeout=timeout)
    client.set_http_retry_params(retry=False)
    try:
        studies = client.search_for_studies(
            search_filters={"StudyInstanceUID": study_uid},
            fields=["NumberOfStudyRelatedInstances"],
            get_remaining=False,
        )
    except Exception as e:  # requests' connection and HTTP errors, whatever the transport
        raise PacsUnavailable(f"QIDO-RS at {url}: {e}") from e
    for study in studies:
        values = study.get(_COUNT_TAG, {}).get("Value") or []
        if values:
            return int(values[0])
    return None
