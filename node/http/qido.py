"""QIDO-RS (PS3.18 10.6): query parameters into catalog filters (answers: qido_answers.py).

Parameters name an attribute by keyword (``PatientID``) or tag (``00100020``). What the
index can match:

====================================  ==================================================
UIDs (Study/Series/SOP Instance,      one value or a list (commas or backslashes)
SOP Class)
PatientName, ReferringPhysicianName   single value or ``*``/``?`` wildcards, ignoring case
PatientID, AccessionNumber, StudyID,  single value or wildcards, case-sensitive
StudyDescription, SeriesDescription,
BodyPartExamined, PatientSex
StudyDate, PatientBirthDate           YYYYMMDD, or a range ``A-B``, ``-B``, ``A-``
StudyTime                             HHMMSS[.ffffff] (or HH, HHMM), or a range
Modality, ModalitiesInStudy           one value or a list
SeriesNumber, InstanceNumber          one number or a list
====================================  ==================================================

An empty value or a lone ``*`` matches everything (and asks for the attribute back).
Other DICOM attributes are ignored with a ``Warning`` header, as PS3.18 asks; a name
that is no DICOM attribute, or a value that can't be what it names, is a 400 naming
the parameter. Answers are PS3.18 Annex F JSON built by hand from the catalog's
records: each attribute with its ``vr`` and a ``Value`` (``{"Alphabetic": ...}`` for
person names), an empty one without ``Value``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from pydicom.datadict import keyword_for_tag, tag_for_keyword

from node.store.catalog_records import (
    Filters,
    Page,
    TextField,
    TextMatch,
    ValueRange,
)

__all__ = [
    "DEFAULT_LIMIT",
    "MAX_LIMIT",
    "PATIENT_KEYWORDS",
    "BadQuery",
    "Query",
    "QueryLevel",
    "parse_query",
]

# Matches per answer when the client gives no limit, and the most it may ask for; a
# client pages through more with offset (the answer's Warning header says there are more).
DEFAULT_LIMIT = 1000
MAX_LIMIT = 5000

# Query keys whose values identify a patient: kept out of logs and the audit trail
# unless node.log_phi is true.
PATIENT_KEYWORDS = frozenset(
    {
        "PatientName",
        "PatientID",
        "PatientBirthDate",
        "PatientSex",
        "OtherPatientIDs",
        "IssuerOfPatientID",
        "AccessionNumber",
        "ReferringPhysicianName",
    }
)

_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")
_TAG = re.compile(r"^[0-9A-Fa-f]{8}$")
_TIME = re.compile(r"^([01][0-9]|2[0-3])([0-5][0-9]([0-5][0-9](\.[0-9]{1,6})?)?)?$")
_LIST_SEPARATORS = re.compile(r"[,\\]")
# PS3.18 8.3.4 names these in lower case; they are taken in any case.
_LIMIT, _OFFSET, _INCLUDE, _FUZZY = "limit", "offset", "includefield", "fuzzymatching"


class QueryLevel(StrEnum):
    STUDY = "study"
    SERIES = "series"
    INSTANCE = "instance"


class BadQuery(ValueError):
    """A query the node can't run (HTTP 400); the message names the parameter."""


# What each level returns by default (PS3.18 tables 10.6.3-3 to -5, as far as the index
# keeps them), and what else it can return.
_STUDY_DEFAULT = (
    "StudyDate",
    "StudyTime",
    "AccessionNumber",
    "InstanceAvailability",
    "ModalitiesInStudy",
    "ReferringPhysicianName",
    "RetrieveURL",
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyInstanceUID",
    "StudyID",
    "StudyDescription",
    "NumberOfStudyRelatedSeries",
    "NumberOfStudyRelatedInstances",
)
_STUDY_STORED = tuple(
    k
    for k in _STUDY_DEFAULT
    if k
    not in (
        "InstanceAvailability",
        "ModalitiesInStudy",
        "RetrieveURL",
        "NumberOfStudyRelatedSeries",
        "NumberOfStudyRelatedInstances",
    )
)
_SERIES_DEFAULT = (
    "Modality",
    "SeriesInstanceUID",
    "SeriesNumber",
    "SeriesDescription",
    "BodyPartExamined",
    "NumberOfSeriesRelatedInstances",
    "InstanceAvailability",
    "RetrieveURL",
)
_SERIES_STORED = (
    "Modality",
    "SeriesInstanceUID",
    "SeriesNumber",
    "SeriesDescription",
    "BodyPartExamined",
)
_INSTANCE_DEFAULT = (
    "SOPClassUID",
    "SOPInstanceUID",
    "InstanceNumber",
    "Rows",
    "Columns",
    "NumberOfFrames",
    "AvailableTransferSyntaxUID",
    "InstanceAvailability",
    "RetrieveURL",
)

_RETURNABLE: dict[QueryLevel, frozenset[str]] = {
    QueryLevel.STUDY: frozenset(_STUDY_DEFAULT),
    QueryLevel.SERIES: frozenset(_SERIES_DEFAULT + _STUDY_STORED),
    QueryLevel.INSTANCE: frozenset(_INSTANCE_DEFAULT + _SERIES_STORED + _STUDY_STORED),
}

_UID_KEYS = {
    "StudyInstanceUID": "study_uids",
    "SeriesInstanceUID": "series_uids",
    "SOPInstanceUID": "sop_uids",
    "SOPClassUID": "sop_class_uids",
}
_LIST_KEYS = {"Modality": "modalities", "ModalitiesInStudy": "modalities_in_study"}
_NUMBER_KEYS = {"SeriesNumber": "series_numbers", "InstanceNumber": "instance_numbers"}
_TEXT_KEYS = {
    "PatientID": TextField.PATIENT_ID,
    "PatientName": TextField.PATIENT_NAME,
    "PatientSex": TextField.PATIENT_SEX,
    "AccessionNumber": TextField.ACCESSION_NUMBER,
    "StudyDescription": TextField.STUDY_DESCRIPTION,
    "ReferringPhysicianName": TextField.REFERRING_PHYSICIAN,
    "StudyID": TextField.STUDY_ID,
    "SeriesDescription": TextField.SERIES_DESCRIPTION,
    "BodyPartExamined": TextField.BODY_PART,
}
_DATE_KEYS = {"StudyDate": "study_date", "PatientBirthDate": "patient_birth_date"}
_TIME_KEYS = {"StudyTime": "study_time"}


@dataclass(frozen=True)
class Query:
    level: QueryLevel
    filters: Filters
    page: Page
    returned: frozenset[str]  # keywords each match carries
    warnings: tuple[str, ...]
    # The parameters as asked (patient values withheld unless asked to show them): for
    # the audit trail.
    described: tuple[str, ...]


@dataclass
class _Builder:
    level: QueryLevel
    values: dict[str, Any] = field(default_factory=dict)
    text: list[TextMatch] = field(default_factory=list)
    returned: set[str] = field(default_factory=set)
    warnings: list[str] = field(default_factory=list)
    seen: set[str] = field(default_factory=set)

    def once(self, keyword: str, parameter: str) -> None:
        if keyword in self.seen and keyword not in _UID_KEYS:
            raise BadQuery(f"query parameter {parameter}: {keyword} is given more than once")
        self.seen.add(keyword)


def _keyword(name: str, parameter: str) -> str:
    """The attribute keyword a parameter names (a keyword or an 8-digit tag)."""
    if _TAG.match(name):
        keyword = keyword_for_tag(int(name, 16))
        if not keyword:
            raise BadQuery(f"query parameter {parameter}: tag {name} is no DICOM attribute")
        return keyword
    if tag_for_keyword(name) is None:
        raise BadQuery(
            f"query parameter {parameter}: {name!r} is neither a DICOM keyword nor a tag "
            "(8 hexadecimal digits)"
        )
    return name


def _list(value: str) -> tuple[str, ...]:
    return tuple(v.strip() for v in _LIST_SEPARATORS.split(value) if v.strip())


def _uids(keyword: str, value: str) -> tuple[str, ...]:
    uids = _list(value)
    for uid in uids:
        if len(uid) > 64 or not _UID.match(uid):
            raise BadQuery(f"query parameter {keyword}: {uid!r} is not a UID")
    return uids


def _numbers(keyword: str, value: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in _list(value))
    except ValueError:
        raise BadQuery(
            f"query parameter {keyword}: {value!r} is not a number or a list of numbers"
        ) from None


def _date(keyword: str, value: str, whole: str) -> str:
    try:
        datetime.strptime(value, "%Y%m%d")
    except ValueError:
        raise BadQuery(
            f"query parameter {keyword}: {whole!r} is not a date (YYYYMMDD) or a range of "
            "dates (YYYYMMDD-YYYYMMDD, -YYYYMMDD, YYYYMMDD-)"
        ) from None
    return value


def _date_range(keyword: str, value: str) -> ValueRange:
    low, dash, high = value.partition("-")
    if not dash:
        day = _date(keyword, value, value)
        return ValueRange(day, day)
    if not low and not high:
        raise BadQuery(f"query parameter {keyword}: {value!r} has no bound on either side")
    bounds = ValueRange(
        _date(keyword, low, value) if low else None, _date(keyword, high, value) if high else None
    )
    if bounds.low and bounds.high and bounds.low > bounds.high:
        raise BadQuery(f"query parameter {keyword}: {value!r} ends before it starts")
    return bounds


def _time(keyword: str, value: str, whole: str) -> str:
    if not _TIME.match(value):
        raise BadQuery(
            f"query parameter {keyword}: {whole!r} is not a time (HHMMSS, HHMM, HH, "
            "HHMMSS.ffffff) or a range of times (A-B, -B, A-)"
        )
    return value


def _time_upper(value: str) -> str:
    """The last moment a partial time names: 10 → 105959.999999, 1030 → 103059.999999.

    Stored times compare as text; a short bound would exclude 100000 from ``-10``.
    """
    whole, _, fraction = value.partition(".")
    return (whole + "5959"[len(whole) - 2 :]) + "." + fraction.ljust(6, "9")


def _time_range(keyword: str, value: str) -> ValueRange:
    low, dash, high = value.partition("-")
    if not dash:
        moment = _time(keyword, value, value)
        return ValueRange(moment, _time_upper(moment))
    if not low and not high:
        raise BadQuery(f"query parameter {keyword}: {value!r} has no bound on either side")
    return ValueRange(
        _time(keyword, low, value) if low else None,
        _time_upper(_time(keyword, high, value)) if high else None,
    )


def _match(builder: _Builder, keyword: str, value: str, parameter: str) -> None:
    """Add one attribute's matching to ``builder``; an empty or ``*`` value matches all."""
    builder.once(keyword, parameter)
    builder.returned.add(keyword)
    value = value.strip()
    if value in ("", "*"):
        return
    if keyword in _UID_KEYS:
        key = _UID_KEYS[keyword]
        builder.values[key] = builder.values.get(key, ()) + _uids(keyword, value)
    elif keyword in _LIST_KEYS:
        builder.values[_LIST_KEYS[keyword]] = _list(value)
    elif keyword in _NUMBER_KEYS:
        builder.values[_NUMBER_KEYS[keyword]] = _numbers(keyword, value)
    elif keyword in _TEXT_KEYS:
        builder.text.append(TextMatch(_TEXT_KEYS[keyword], value))
    elif keyword in _DATE_KEYS:
        builder.values[_DATE_KEYS[keyword]] = _date_range(keyword, value)
    elif keyword in _TIME_KEYS:
        builder.values[_TIME_KEYS[keyword]] = _time_range(keyword, value)
    else:
        builder.returned.discard(keyword)
        builder.warnings.append(
            f"{keyword} is not held in the node's index for matching; the value was ignored"
        )


def _include(builder: _Builder, value: str) -> None:
    for name in _list(value):
        if name.lower() == "all":
            builder.returned |= _RETURNABLE[builder.level]
            continue
        keyword = _keyword(name, _INCLUDE)
        if keyword in _RETURNABLE[builder.level]:
            builder.returned.add(keyword)
        else:
            builder.warnings.append(
                f"includefield {keyword} is not held in the node's index at "
                f"{builder.level.value} level; left out"
            )


def _integer(name: str, value: str, *, low: int, high: int | None = None) -> int:
    try:
        number = int(value)
    except ValueError:
        raise BadQuery(f"query parameter {name}: {value!r} is not a whole number") from None
    if number < low or (high is not None and number > high):
        top = f" and at most {high}" if high is not None else ""
        raise BadQuery(f"query parameter {name}: {number} must be at least {low}{top}")
    return number


def parse_query(
    level: QueryLevel,
    parameters: Sequence[tuple[str, str]],
    *,
    study_uid: str | None = None,
    series_uid: str | None = None,
    show_patient: bool = False,
) -> Query:
    """Turn a QIDO-RS request's query string into catalog filters.

    ``study_uid``/``series_uid``: the scope from the path. ``show_patient``: whether
    the description for the audit trail keeps patient values (node.log_phi).
    Raises BadQuery naming the parameter that can't be used.
    """
    builder = _Builder(level)
    limit, offset = DEFAULT_LIMIT, 0
    described: list[str] = []
    for name, value in parameters:
        special = name.lower()
        if special == _LIMIT:
            limit = _integer(_LIMIT, value, low=1, high=MAX_LIMIT)
        elif special == _OFFSET:
            offset = _integer(_OFFSET, value, low=0)
        elif special == _INCLUDE:
            _include(builder, value)
        elif special == _FUZZY:
            if value.lower() not in ("true", "false"):
                raise BadQuery(f"query parameter {_FUZZY}: {value!r} is neither true nor false")
            if value.lower() == "true":
                builder.warnings.append("fuzzymatching is not supported; matching was exact")
        else:
            keyword = _keyword(name, name)
            _match(builder, keyword, value, name)
            if keyword in PATIENT_KEYWORDS and not show_patient and value.strip():
                described.append(f"{keyword}=(withheld)")
                continue
        described.append(f"{name}={value}")
    for keyword, scope in (("StudyInstanceUID", study_uid), ("SeriesInstanceUID", series_uid)):
        if scope is None:
            continue
        key = _UID_KEYS[keyword]
        asked = builder.values.get(key)
        if asked is not None and scope not in asked:
            raise BadQuery(
                f"query parameter {keyword}: {', '.join(asked)} excludes {scope}, "
                "which the path asks for"
            )
        builder.values[key] = _uids(keyword, scope)
        builder.returned.add(keyword)
    returned = _defaults(level, scoped_to_study=study_uid is not None) | builder.returned
    filters = Filters(text=tuple(builder.text), **builder.values)
    return Query(
        level=level,
        filters=filters,
        page=Page(limit=limit, offset=offset),
        returned=frozenset(returned & _RETURNABLE[level]),
        warnings=tuple(builder.warnings),
        described=tuple(described),
    )


def _defaults(level: QueryLevel, *, scoped_to_study: bool) -> set[str]:
    if level is QueryLevel.STUDY:
        return set(_STUDY_DEFAULT)
    # Lower levels name their study; unscoped searches describe it (PS3.18 10.6.3.3.2).
    study = {"StudyInstanceUID"} if scoped_to_study else set(_STUDY_STORED)
    if level is QueryLevel.SERIES:
        return set(_SERIES_DEFAULT) | study
    return set(_INSTANCE_DEFAULT) | {"SeriesInstanceUID"} | study
