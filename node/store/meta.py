"""What the index keeps of an instance, validated once as it arrives."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydicom import Dataset
from pydicom.tag import BaseTag, Tag
from pydicom.uid import UID
from pydicom.valuerep import PersonName

from node import MANUFACTURER


class InvalidInstance(ValueError):
    """A data set the node can't file: the message names what is missing."""


class UnreadableData(InvalidInstance):
    """Bytes that don't parse as a DICOM data set at all."""


def _uid(ds: Dataset, keyword: str) -> str:
    value = str(ds.get(keyword, "") or "").strip()
    if not value:
        raise InvalidInstance(f"{keyword} is missing")
    if not UID(value).is_valid:
        raise InvalidInstance(f"{keyword} {value!r} is not a valid UID")
    return value


def _text(ds: Dataset, keyword: str) -> str | None:
    value = ds.get(keyword)
    if value is None or value == "":
        return None
    if isinstance(value, PersonName):
        return str(value)
    if keyword == "ImageType":
        return "\\".join(str(v) for v in (value if isinstance(value, list | tuple) else [value]))
    if not isinstance(value, str | int | float):
        # MultiValue and friends: keep DICOM's own backslash form
        return "\\".join(str(v) for v in value)
    return str(value)


def _integer(ds: Dataset, keyword: str) -> int | None:
    """An IS/US value as an int; None when absent or not a number (never a reason to refuse)."""
    value = ds.get(keyword)
    if value is None or value == "":
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


# Which attribute each field holds, by how it is read. The receive path parses only
# these (INDEXED_TAGS), so a field added here is read everywhere an instance is filed.
_UIDS = {
    "study_uid": "StudyInstanceUID",
    "series_uid": "SeriesInstanceUID",
    "sop_uid": "SOPInstanceUID",
    "sop_class_uid": "SOPClassUID",
}
_TEXTS = {
    "patient_id": "PatientID",
    "accession_number": "AccessionNumber",
    "modality": "Modality",
    "body_part": "BodyPartExamined",
    "series_description": "SeriesDescription",
    "image_type": "ImageType",
    # What DICOMweb queries and the worklist answer with (QIDO-RS's required keys).
    "patient_name": "PatientName",
    "patient_birth_date": "PatientBirthDate",
    "patient_sex": "PatientSex",
    "study_date": "StudyDate",
    "study_time": "StudyTime",
    "study_description": "StudyDescription",
    "referring_physician": "ReferringPhysicianName",
    "dicom_study_id": "StudyID",
}
_INTEGERS = {
    "series_number": "SeriesNumber",
    "instance_number": "InstanceNumber",
    "rows": "Rows",
    "columns": "Columns",
    "number_of_frames": "NumberOfFrames",
}
INDEXED_TAGS: list[BaseTag | int] = [
    Tag(keyword)
    for keyword in (
        "SpecificCharacterSet",
        "Manufacturer",
        *_UIDS.values(),
        *_TEXTS.values(),
        *_INTEGERS.values(),
    )
]


@dataclass(frozen=True)
class InstanceMeta:
    study_uid: str
    series_uid: str
    sop_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    patient_id: str | None
    accession_number: str | None
    modality: str | None
    body_part: str | None
    series_description: str | None
    image_type: str | None
    calling_ae: str | None
    # Study, series and instance attributes for queries; None when the instance lacks them.
    patient_name: str | None = None
    patient_birth_date: str | None = None
    patient_sex: str | None = None
    study_date: str | None = None
    study_time: str | None = None
    study_description: str | None = None
    referring_physician: str | None = None
    dicom_study_id: str | None = None
    series_number: int | None = None
    instance_number: int | None = None
    rows: int | None = None
    columns: int | None = None
    number_of_frames: int | None = None
    # One of this node's own result objects coming back (a PACS that routes everything):
    # filed, never treated as new work.
    is_own_result: bool = False

    @classmethod
    def from_dataset(
        cls, ds: Dataset, *, transfer_syntax_uid: str, calling_ae: str | None
    ) -> InstanceMeta:
        values: dict[str, Any] = {
            **{field: _uid(ds, keyword) for field, keyword in _UIDS.items()},
            **{field: _text(ds, keyword) for field, keyword in _TEXTS.items()},
            **{field: _integer(ds, keyword) for field, keyword in _INTEGERS.items()},
        }
        return cls(
            **values,
            transfer_syntax_uid=transfer_syntax_uid,
            calling_ae=calling_ae,
            is_own_result=str(ds.get("Manufacturer", "")) == MANUFACTURER,
        )
