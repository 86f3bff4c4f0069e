"""QIDO-RS answers (PS3.18 Annex F): the catalog's records as DICOM JSON, with RetrieveURLs.

Built by hand from the records: each attribute with its ``vr`` and a ``Value``
(``{"Alphabetic": ...}`` for person names), an empty one without ``Value``, only those
the query returns (its defaults and ``includefield``).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any
from urllib.parse import quote

from pydicom.datadict import dictionary_VR, tag_for_keyword

from node.http.qido import Query
from node.store.catalog_records import (
    InstanceRecord,
    SeriesAttributes,
    SeriesRecord,
    StudyAttributes,
    StudyRecord,
)

__all__ = ["instance_json", "instance_url", "series_json", "series_url", "study_json", "study_url"]


def _element(keyword: str, value: object) -> tuple[str, dict[str, Any]]:
    tag = tag_for_keyword(keyword)
    assert tag is not None, keyword
    vr = dictionary_VR(tag)
    values: list[Any]
    if value is None or value == "" or value == ():
        return f"{tag:08X}", {"vr": vr}
    if isinstance(value, tuple | list):
        values = list(value)
    else:
        values = [value]
    if vr == "PN":
        values = [_person_name(str(v)) for v in values]
    elif vr == "IS":
        values = [int(v) for v in values]
    return f"{tag:08X}", {"vr": vr, "Value": values}


def _person_name(value: str) -> dict[str, str]:
    groups = dict(zip(("Alphabetic", "Ideographic", "Phonetic"), value.split("="), strict=False))
    return {kind: text for kind, text in groups.items() if text}


def _answer(pairs: Iterable[tuple[str, object]], returned: frozenset[str]) -> dict[str, Any]:
    chosen = dict(_element(k, v) for k, v in pairs if k in returned)
    return dict(sorted(chosen.items()))


# Each answer attribute and the record field that holds it.
_STUDY_FIELDS = {
    "StudyInstanceUID": "study_uid",
    "StudyDate": "study_date",
    "StudyTime": "study_time",
    "AccessionNumber": "accession_number",
    "ReferringPhysicianName": "referring_physician",
    "PatientName": "patient_name",
    "PatientID": "patient_id",
    "PatientBirthDate": "patient_birth_date",
    "PatientSex": "patient_sex",
    "StudyID": "dicom_study_id",
    "StudyDescription": "study_description",
}
_SERIES_FIELDS = {
    "SeriesInstanceUID": "series_uid",
    "Modality": "modality",
    "SeriesNumber": "series_number",
    "SeriesDescription": "series_description",
    "BodyPartExamined": "body_part",
}


def _pairs(
    record: StudyAttributes | SeriesAttributes, fields: dict[str, str]
) -> list[tuple[str, object]]:
    return [(keyword, getattr(record, name)) for keyword, name in fields.items()]


def _study_pairs(study: StudyAttributes) -> list[tuple[str, object]]:
    return _pairs(study, _STUDY_FIELDS)


def _series_pairs(series: SeriesAttributes) -> list[tuple[str, object]]:
    return _pairs(series, _SERIES_FIELDS)


def study_url(root: str, study_uid: str) -> str:
    return f"{root}/studies/{quote(study_uid)}"


def series_url(root: str, study_uid: str, series_uid: str) -> str:
    return f"{study_url(root, study_uid)}/series/{quote(series_uid)}"


def instance_url(root: str, study_uid: str, series_uid: str, sop_uid: str) -> str:
    return f"{series_url(root, study_uid, series_uid)}/instances/{quote(sop_uid)}"


def study_json(record: StudyRecord, query: Query, root: str) -> dict[str, Any]:
    """One study match; ``root``: the DICOMweb base URL, for RetrieveURL."""
    study = record.study
    return _answer(
        [
            *_study_pairs(study),
            ("ModalitiesInStudy", record.modalities),
            ("NumberOfStudyRelatedSeries", record.series_count),
            ("NumberOfStudyRelatedInstances", record.instance_count),
            ("InstanceAvailability", "ONLINE"),
            ("RetrieveURL", study_url(root, study.study_uid)),
        ],
        query.returned,
    )


def series_json(record: SeriesRecord, query: Query, root: str) -> dict[str, Any]:
    study, series = record.study, record.series
    return _answer(
        [
            *_study_pairs(study),
            *_series_pairs(series),
            ("NumberOfSeriesRelatedInstances", record.instance_count),
            ("InstanceAvailability", "ONLINE"),
            ("RetrieveURL", series_url(root, study.study_uid, series.series_uid)),
        ],
        query.returned,
    )


def instance_json(record: InstanceRecord, query: Query, root: str) -> dict[str, Any]:
    return _answer(
        [
            *_study_pairs(record.study),
            *_series_pairs(record.series),
            ("SOPClassUID", record.sop_class_uid),
            ("SOPInstanceUID", record.sop_uid),
            ("InstanceNumber", record.instance_number),
            ("Rows", record.rows),
            ("Columns", record.columns),
            ("NumberOfFrames", record.number_of_frames),
            ("AvailableTransferSyntaxUID", record.transfer_syntax_uid),
            ("InstanceAvailability", "ONLINE"),
            (
                "RetrieveURL",
                instance_url(root, record.study_uid, record.series_uid, record.sop_uid),
            ),
        ],
        query.returned,
    )
