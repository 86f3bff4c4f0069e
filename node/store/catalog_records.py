"""What a catalog search takes (filters, a page) and gives back (records of studies,
series and instances, one page of them): plain values, no SQL."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Generic, TypeVar

__all__ = [
    "Filters",
    "Found",
    "InstanceRecord",
    "NotInCatalog",
    "Page",
    "SeriesAttributes",
    "SeriesRecord",
    "StudyAttributes",
    "StudyRecord",
    "TextField",
    "TextMatch",
    "ValueRange",
]


class NotInCatalog(LookupError):
    """A study, series or instance the node doesn't hold; the message names the UID."""


class TextField(StrEnum):
    """Attributes matched as text (single value or wildcards), by where they are kept."""

    PATIENT_ID = "patient_id"
    PATIENT_NAME = "patient_name"
    PATIENT_SEX = "patient_sex"
    ACCESSION_NUMBER = "accession_number"
    STUDY_DESCRIPTION = "study_description"
    REFERRING_PHYSICIAN = "referring_physician"
    STUDY_ID = "dicom_study_id"
    SERIES_DESCRIPTION = "series_description"
    BODY_PART = "body_part"

    @property
    def is_person_name(self) -> bool:
        return self in (TextField.PATIENT_NAME, TextField.REFERRING_PHYSICIAN)

    @property
    def is_study_level(self) -> bool:
        return self not in (TextField.SERIES_DESCRIPTION, TextField.BODY_PART)


@dataclass(frozen=True)
class TextMatch:
    field: TextField
    pattern: str  # '*' any run of characters, '?' one character; else the whole value


@dataclass(frozen=True)
class ValueRange:
    """Inclusive bounds on text that sorts as it reads (YYYYMMDD, HHMMSS); None: open."""

    low: str | None
    high: str | None


@dataclass(frozen=True)
class Filters:
    """What a search must match; empty fields match everything.

    Keys below the level searched make it relational: a study search with
    ``modalities`` finds studies that have such a series, a series search with
    ``sop_class_uids`` series that have such an instance.
    """

    study_uids: tuple[str, ...] = ()
    series_uids: tuple[str, ...] = ()
    sop_uids: tuple[str, ...] = ()
    text: tuple[TextMatch, ...] = ()
    study_date: ValueRange | None = None
    study_time: ValueRange | None = None
    patient_birth_date: ValueRange | None = None
    modalities_in_study: tuple[str, ...] = ()
    modalities: tuple[str, ...] = ()
    series_numbers: tuple[int, ...] = ()
    sop_class_uids: tuple[str, ...] = ()
    instance_numbers: tuple[int, ...] = ()

    @property
    def has_series_keys(self) -> bool:
        return bool(
            self.series_uids
            or self.modalities
            or self.series_numbers
            or any(not m.field.is_study_level for m in self.text)
        )

    @property
    def has_instance_keys(self) -> bool:
        return bool(self.sop_uids or self.sop_class_uids or self.instance_numbers)


@dataclass(frozen=True)
class Page:
    limit: int
    offset: int = 0


@dataclass(frozen=True)
class StudyAttributes:
    """A study's attributes as the index keeps them (from its first instance)."""

    study_uid: str
    patient_name: str | None
    patient_id: str | None
    patient_birth_date: str | None
    patient_sex: str | None
    study_date: str | None
    study_time: str | None
    accession_number: str | None
    referring_physician: str | None
    dicom_study_id: str | None
    study_description: str | None


@dataclass(frozen=True)
class StudyRecord:
    study: StudyAttributes
    modalities: tuple[str, ...]  # ModalitiesInStudy, sorted
    series_count: int
    instance_count: int


@dataclass(frozen=True)
class SeriesAttributes:
    series_uid: str
    modality: str | None
    series_number: int | None
    series_description: str | None
    body_part: str | None


@dataclass(frozen=True)
class SeriesRecord:
    study: StudyAttributes
    series: SeriesAttributes
    instance_count: int


@dataclass(frozen=True)
class InstanceRecord:
    study: StudyAttributes
    series: SeriesAttributes
    sop_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    instance_number: int | None
    rows: int | None
    columns: int | None
    number_of_frames: int | None
    path: str  # the stored Part 10 file
    is_result: bool  # one of the node's own result objects

    @property
    def study_uid(self) -> str:
        return self.study.study_uid

    @property
    def series_uid(self) -> str:
        return self.series.series_uid


T = TypeVar("T")

@dataclass(frozen=True)
class Found(Generic[T]):
    """One page of matches; ``more``: there were matches after it."""

    records: list[T]
    more: bool


