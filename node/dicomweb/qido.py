"""QIDO-RS: searches at the PACS, page by page, and how large a study is there."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

from pydicom.tag import Tag

from node.config import PacsSettings
from node.dicomweb.client import dicomweb_client, unavailable_on_failure
from node.pacs_errors import describe_pacs

__all__ = ["DicomJson", "Level", "count_study_instances", "json_text", "search"]

# One QIDO-RS answer: DICOM JSON, attributes by tag ("0020000D": {"vr": …, "Value": […]}).
DicomJson = dict[str, Any]
# What a search asks for, as the QIDO-RS resource names it, and the UID each answer has.
Level = Literal["studies", "series", "instances"]
_UID_OF_LEVEL: dict[Level, str] = {
    "studies": "StudyInstanceUID",
    "series": "SeriesInstanceUID",
    "instances": "SOPInstanceUID",
}


def count_study_instances(study_uid: str, *, pacs: PacsSettings) -> int | None:
    """NumberOfStudyRelatedInstances from QIDO-RS; None if the PACS doesn't have the study
    or doesn't count it. PacsUnavailable when the PACS can't answer."""
    assert pacs.dicomweb_url is not None
    client = dicomweb_client(pacs.dicomweb_url, timeout=pacs.timeout_seconds)
    with unavailable_on_failure(describe_pacs(pacs, "QIDO-RS")):
        studies = client.search_for_studies(
            search_filters={"StudyInstanceUID": study_uid},
            fields=["NumberOfStudyRelatedInstances"],
            get_remaining=False,
        )
    counts = [json_text(study, "NumberOfStudyRelatedInstances") for study in studies]
    return next((int(count) for count in counts if count.isdigit()), None)


def search(
    pacs: PacsSettings,
    level: Level,
    *,
    fields: Sequence[str],
    filters: Mapping[str, str] | None = None,
    study_uid: str | None = None,
    about: str | None = None,
) -> dict[str, DicomJson]:
    """Every answer of a search at ``level`` (within ``study_uid`` for series and
    instances), by its UID; PacsUnavailable, naming ``about`` too, when the PACS can't answer.

    Page by page, not with dicomweb-client's ``get_remaining``: that asks for the next
    offset until a page comes back empty, and Orthanc 1.10 ignores the offset of a search
    on ModalitiesInStudy, so that never ends. A page that brings no new UID ends it here.
    """
    assert pacs.dicomweb_url is not None
    where = describe_pacs(pacs, "QIDO-RS")
    client = dicomweb_client(pacs.dicomweb_url, timeout=pacs.timeout_seconds)
    search_filters = dict(filters or {})

    def page(offset: int) -> list[DicomJson]:
        if level == "studies":
            return client.search_for_studies(
                search_filters=search_filters, fields=list(fields), offset=offset
            )
        search_in_study = (
            client.search_for_series if level == "series" else client.search_for_instances
        )
        return search_in_study(
            study_instance_uid=study_uid,
            search_filters=search_filters,
            fields=list(fields),
            offset=offset,
        )

    key = _UID_OF_LEVEL[level]
    answers: dict[str, DicomJson] = {}
    offset = 0
    with unavailable_on_failure(f"{where}: {about}" if about else where):
        while True:
            found = page(offset)
            new = {uid: a for a in found if (uid := json_text(a, key)) and uid not in answers}
            if not new:
                return answers
            answers.update(new)
            offset += len(found)


def json_text(answer: Mapping[str, Any], keyword: str) -> str:
    """The first value of ``keyword`` in a DICOM JSON answer, as stripped text ("" if none)."""
    values = answer.get(f"{Tag(keyword):08X}", {}).get("Value") or []
    return str(values[0]).strip() if values else ""
