"""What the index keeps of an instance, validated once as it arrives."""

from __future__ import annotations

from dataclasses import dataclass

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


# What from_dataset reads: the receive path parses only these.
INDEXED_TAGS: list[BaseTag | int] = [
    Tag(keyword)
    for keyword in (
        "SpecificCharacterSet",
        "ImageType",
        "SOPClassUID",
        "SOPInstanceUID",
        "AccessionNumber",
        "Modality",
        "Manufacturer",
        "SeriesDescription",
        "PatientID",
        "BodyPartExamined",
        "StudyInstanceUID",
        "SeriesInstanceUID",
        # What DICOMweb queries and the worklist answer with (QIDO-RS's required keys).
        "StudyDate",
        "StudyTime",
        "ReferringPhysicianName",
        "StudyDescription",
        "PatientName",
        "PatientBirthDate",
        "PatientSex",
        "StudyID",
        "SeriesNumber",
        "InstanceNumber",
        "NumberOfFrames",
        "Rows",
        "Columns",
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
        return cls(
            study_uid=_uid(ds, "StudyInstanceUID"),
            series_uid=_uid(ds, "SeriesInstanceUID"),
            sop_uid=_uid(ds, "SOPInstanceUID"),
            sop_class_uid=_uid(ds, "SOPClassUID"),
            transfer_syntax_uid=transfer_syntax_uid,
            patient_id=_text(ds, "PatientID"),
            accession_number=_text(ds, "AccessionNumber"),
            modality=_text(ds, "Modality"),
            body_part=_text(ds, "BodyPartExamined"),
            series_description=_text(ds, "SeriesDescription"),
            image_type=_text(ds, "ImageType"),
            calling_ae=calling_ae,
            patient_name=_text(ds, "PatientName"),
            patient_birth_date=_text(ds, "PatientBirthDate"),
            patient_sex=_text(ds, "PatientSex"),
            study_date=_text(ds, "StudyDate"),
            study_time=_text(ds, "StudyTime"),
            study_description=_text(ds, "StudyDescription"),
            referring_physician=_text(ds, "ReferringPhysicianName"),
            dicom_study_id=_text(ds, "StudyID"),
            series_number=_integer(ds, "SeriesNumber"),
            instance_number=_integer(ds, "InstanceNumber"),
            rows=_integer(ds, "Rows"),
            columns=_integer(ds, "Columns"),
            number_of_frames=_integer(ds, "NumberOfFrames"),
            is_own_result=str(ds.get("Manufacturer", "")) == MANUFACTURER,
        )
