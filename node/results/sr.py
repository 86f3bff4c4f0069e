"""Header helpers every result SR shares: evidence, character set, de-identification.

The node's result document is the TID 1500 measurement report
(:mod:`node.results.tid1500`); these functions prepare what highdicom copies
from the sources into it. Pure: no I/O, no clocks.
"""

from __future__ import annotations

import logging

from pydicom import Dataset

__all__ = [
    "COMPLETION_DESCRIPTION",
    "UTF8_CHARACTER_SET",
    "character_set",
    "complete_deidentification",
    "evidence_header",
    "evidence_reference",
]

logger = logging.getLogger(__name__)

UTF8_CHARACTER_SET = "ISO_IR 192"

# highdicom reads these from the first source unconditionally; they are Type 2
# (must be present, may be empty) but real archives do send headers without
# them, and a missing Accession Number must not cost the reader their report.
_TYPE2_PATIENT_STUDY_KEYWORDS = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "AccessionNumber",
    "StudyID",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
)

_EVIDENCE_KEYWORDS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPClassUID", "SOPInstanceUID")

_PIXEL_KEYWORDS = frozenset({"PixelData", "FloatPixelData", "DoubleFloatPixelData"})

_UNKNOWN_DEIDENTIFICATION = "Unknown: not stated in the source instances"

COMPLETION_DESCRIPTION = "AI-generated draft; requires review by a qualified professional"


def evidence_header(source: Dataset) -> Dataset:
    """A pixel-free copy of ``source`` with absent Type 2 patient/study
    attributes present but empty, as highdicom expects them.

    Elements are shared, not deep-copied: neither highdicom nor this module
    mutates them, and a CT series' pixel data need not be copied to be cited.
    """
    header = Dataset()
    for element in source:
        if element.keyword not in _PIXEL_KEYWORDS:
            header.add(element)
    filled = [kw for kw in _TYPE2_PATIENT_STUDY_KEYWORDS if kw not in header]
    for keyword in filled:
        setattr(header, keyword, None)
    if filled:
        logger.warning(
            "source %s lacks %s; written empty in the SR",
            source.get("SOPInstanceUID", "?"),
            ", ".join(filled),
        )
    return header


def evidence_reference(source: Dataset) -> Dataset:
    """What highdicom reads of every source but the first: the four UIDs it files the
    instance under in the evidence sequences (a copy of a whole header is 85 copies for
    a CT)."""
    reference = Dataset()
    for keyword in _EVIDENCE_KEYWORDS:
        setattr(reference, keyword, source[keyword].value)
    return reference


def complete_deidentification(sr: Dataset) -> None:
    """Name the de-identification method when the copied header claims one.

    Anonymised archives (CQ500, TCIA exports) set Patient Identity Removed
    without saying how, which makes the copied Patient module, and so our SR,
    fail IOD validation. Stating that the method is unknown is true and
    keeps strict archives from rejecting the result.
    """
    if sr.get("PatientIdentityRemoved") != "YES":
        return
    if "DeidentificationMethod" in sr or "DeidentificationMethodCodeSequence" in sr:
        return
    sr.DeidentificationMethod = _UNKNOWN_DEIDENTIFICATION
    logger.warning(
        "source of SR %s says patient identity removed without a method; recorded as unknown",
        sr.SOPInstanceUID,
    )


def character_set(first: Dataset, *texts: str) -> str | list[str] | None:
    """Keep the source's character set unless our own text needs more.

    UTF-8 can carry anything the source could (values are decoded to ``str``
    on read and re-encoded on write), so switching to it never loses a
    patient name; staying on the source's set keeps plain-ASCII reports
    byte-compatible with archives that predate UTF-8.
    """
    if all(text.isascii() for text in texts):
        charset = first.get("SpecificCharacterSet")
        if charset is None or isinstance(charset, str):
            return charset
        return list(charset)
    return UTF8_CHARACTER_SET
