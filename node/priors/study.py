"""What the node knows about a candidate prior study, and the name of the error priors raise."""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from typing import TypeVar

from pydicom import Dataset
from pydicom.valuerep import DA, TM

from node.pacs_errors import PacsUnavailable

_Value = TypeVar("_Value", DA, TM)

# The study-level keys the PACS is asked for (C-FIND return keys / QIDO-RS includefields).
RETURN_KEYS: tuple[str, ...] = (
    "StudyInstanceUID",
    "StudyDate",
    "StudyTime",
    "ModalitiesInStudy",
    "PatientID",
    "IssuerOfPatientID",
    "PatientName",
    "AccessionNumber",
    "StudyDescription",
    "NumberOfStudyRelatedInstances",
)


# The error priors raise is every PACS client's (``node.pacs_errors``); the name stays for
# the callers that catch priors' failures by it.
PriorsUnavailable = PacsUnavailable


@dataclass(frozen=True)
class PriorStudy:
    """One study-level answer from the PACS, with dates parsed (None where absent or invalid)."""

    study_uid: str
    study_date: datetime.date | None
    study_time: datetime.time | None
    modalities: tuple[str, ...]
    patient_id: str
    issuer_of_patient_id: str | None
    patient_name: str
    accession_number: str
    study_description: str
    number_of_instances: int | None

    @property
    def when(self) -> datetime.datetime | None:
        """Study date and time; midnight when only the date is known."""
        if self.study_date is None:
            return None
        return datetime.datetime.combine(self.study_date, self.study_time or datetime.time())

    @classmethod
    def from_identifier(cls, identifier: Dataset) -> PriorStudy:
        """Build from a C-FIND identifier or a QIDO-RS answer read with ``Dataset.from_json``."""
        count = _text(identifier, "NumberOfStudyRelatedInstances")
        return cls(
            study_uid=_text(identifier, "StudyInstanceUID"),
            study_date=parse_date(identifier.get("StudyDate")),
            study_time=parse_time(identifier.get("StudyTime")),
            modalities=_modalities(identifier),
            patient_id=_text(identifier, "PatientID"),
            issuer_of_patient_id=_text(identifier, "IssuerOfPatientID") or None,
            patient_name=_text(identifier, "PatientName"),
            accession_number=_text(identifier, "AccessionNumber"),
            study_description=_text(identifier, "StudyDescription"),
            number_of_instances=int(count) if count.isdigit() else None,
        )


def parse_date(value: object) -> datetime.date | None:
    """A DA value as a date; None for empty or malformed values (never guessed)."""
    parsed = _parse(DA, value)
    return None if parsed is None else datetime.date(parsed.year, parsed.month, parsed.day)


def parse_time(value: object) -> datetime.time | None:
    """A TM value (HHMMSS.FFFFFF, parts optional) as a time; None when empty or malformed."""
    parsed = _parse(TM, value)
    if parsed is None:
        return None
    return datetime.time(parsed.hour, parsed.minute, parsed.second, parsed.microsecond)


def _parse(kind: type[_Value], value: object) -> _Value | None:
    if value in (None, ""):
        return None
    try:
        parsed = kind(str(value).strip())
    except ValueError:
        return None
    return parsed or None


def _text(ds: Dataset, keyword: str) -> str:
    value = ds.get(keyword)
    return "" if value is None else str(value).strip()


def _modalities(ds: Dataset) -> tuple[str, ...]:
    value = ds.get("ModalitiesInStudy")
    if value in (None, ""):
        return ()
    values = [value] if isinstance(value, str) else list(value)
    # Some archives answer one backslash-joined string instead of a multi-value.
    split = [part for v in values for part in str(v).split("\\")]
    return tuple(sorted({v.strip().upper() for v in split if v.strip()}))
