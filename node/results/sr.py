"""The findings document: a Comprehensive SR holding the model's text.

Pure: takes source headers and text, returns a ``pydicom.Dataset``. The SR
joins the source study as a new series, is flagged UNVERIFIED and PRELIMINARY,
and says in its content, disclaimer and series description that it was made
by an AI model (loudly so for a test model).

Content tree (no template is claimed; the shape follows TID 2000's sections)::

    CONTAINER  Diagnostic Imaging Report (LN 18748-4)
      HAS OBS CONTEXT  Observer Type = Device, Device Observer UID/Name/Manufacturer
      CONTAINS  TEXT Comment = disclaimer
      CONTAINS  CONTAINER History            (only with clinical context)
        CONTAINS  TEXT History = context given to the model
      CONTAINS  CONTAINER Findings
        HAS CONCEPT MOD  TEXT Algorithm Name / Version / Parameters (task=...)
        CONTAINS  TEXT Finding = generated text
          INFERRED FROM  IMAGE Source image (one per source instance)
"""

from __future__ import annotations

import datetime
import logging
from collections.abc import Sequence

import highdicom as hd
from highdicom.sr import ComprehensiveSR, ContainerContentItem, ContentItem, ContentSequence
from pydicom import Dataset

from node import MANUFACTURER, __version__
from node.results.content import (
    algorithm_identification,
    clinical_context_section,
    device_observer_context,
    disclaimer_item,
    findings_section,
    report_title,
)
from node.results.disclaimer import disclaimer_text, series_description

__all__ = ["build_findings_sr"]

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

_PIXEL_KEYWORDS = frozenset({"PixelData", "FloatPixelData", "DoubleFloatPixelData"})

_UNKNOWN_DEIDENTIFICATION = "Unknown: not stated in the source instances"

COMPLETION_DESCRIPTION = "AI-generated draft; requires review by a qualified professional"


def build_findings_sr(
    sources: Sequence[Dataset],
    findings: str,
    *,
    task: str,
    model_label: str,
    is_test_model: bool,
    series_number: int = 9901,
    instance_number: int = 1,
    context_used: str | None = None,
    finding_items: Sequence[str] = (),
    prior_sources: Sequence[Dataset] = (),
    previous_versions: Sequence[Dataset] = (),
    manufacturer: str = MANUFACTURER,
    software_version: str = __version__,
    series_instance_uid: str | None = None,
    sop_instance_uid: str | None = None,
    now: datetime.datetime | None = None,
) -> Dataset:
    """Build the findings SR for ``sources`` (instances of one study).

    Parameters
    ----------
    sources:
        Instances the model looked at; headers suffice. All must share one
        Study Instance UID; patient and study attributes come from the first.
    findings:
        The generated text; must contain more than white space.
    task:
        Task name the model ran (recorded as an algorithm parameter).
    model_label:
        The model as readers should see it (device observer and algorithm name).
    is_test_model:
        Marks the document, disclaimer and series as coming from a TEST MODEL.
    series_number, instance_number:
        Numbers of the new series and of this instance in it.
    context_used:
        Clinical context given to the model, recorded when not empty.
    finding_items:
        Further findings, one TEXT item each (a lab test, a per-finding verdict).
    prior_sources:
        Instances of an earlier study the model compared with; cited as source
        images and, being another study, listed as Pertinent Other Evidence.
    manufacturer, software_version:
        General Equipment values for this node.
    series_instance_uid, sop_instance_uid:
        Fixed UIDs for an idempotent retry of the same result; new ones when
        omitted.
    now:
        Creation time for Content and Series Date/Time; the current local time
        when omitted.

    Raises
    ------
    ValueError
        No sources, sources from more than one study, empty findings, or an
        empty task or model label.
    """
    _check_text("findings", findings)
    _check_text("task", task)
    _check_text("model_label", model_label)
    _check_single_study(sources)
    created = now if now is not None else datetime.datetime.now()
    evidence = [evidence_header(ds) for ds in [*sources, *prior_sources]]
    root = _root_container(
        [*sources, *prior_sources],
        findings,
        task=task,
        model_label=model_label,
        is_test_model=is_test_model,
        context_used=context_used,
        manufacturer=manufacturer,
        software_version=software_version,
        finding_items=finding_items,
    )
    first = evidence[0]
    sr = ComprehensiveSR(
        evidence=evidence,
        content=root,
        previous_versions=list(previous_versions) or None,
        series_instance_uid=hd.UID(series_instance_uid),
        series_number=series_number,
        sop_instance_uid=hd.UID(sop_instance_uid),
        instance_number=instance_number,
        manufacturer=manufacturer,
        # A draft by construction: only a human reviewer can complete and verify it.
        is_complete=False,
        is_final=False,
        is_verified=False,
        institution_name=first.get("InstitutionName") or None,
        series_description=series_description(is_test_model=is_test_model),
        software_versions=software_version,
        specific_character_set=character_set(
            first, findings, task, model_label, context_used or "", manufacturer, *finding_items
        ),
        content_date=created.date(),
        content_time=created.time(),
        series_date=created.date(),
        series_time=created.time(),
    )
    sr.CompletionFlagDescription = COMPLETION_DESCRIPTION
    complete_deidentification(sr)
    logger.info(
        "built findings SR %s (series %s) for %d source instance(s), test model: %s",
        sr.SOPInstanceUID,
        sr.SeriesInstanceUID,
        len(sources),
        is_test_model,
    )
    return sr


def _root_container(
    sources: Sequence[Dataset],
    findings: str,
    *,
    task: str,
    model_label: str,
    is_test_model: bool,
    context_used: str | None,
    manufacturer: str,
    software_version: str,
    finding_items: Sequence[str] = (),
) -> ContainerContentItem:
    """Assemble the content tree shown in the module docstring."""
    root = ContainerContentItem(name=report_title(), is_content_continuous=False)
    items: list[ContentItem] = [
        *device_observer_context(model_label, manufacturer),
        disclaimer_item(disclaimer_text(model_label, is_test_model=is_test_model)),
    ]
    if context_used is not None and context_used.strip():
        items.append(clinical_context_section(context_used))
    items.append(
        findings_section(
            findings,
            algorithm=algorithm_identification(model_label, software_version, task),
            sources=sources,
            items=finding_items,
        )
    )
    root.ContentSequence = ContentSequence(items)
    return root


def _check_text(name: str, value: str) -> None:
    if not value.strip():
        raise ValueError(f"{name} must not be empty or white space only")


def _check_single_study(sources: Sequence[Dataset]) -> None:
    """The SR joins one study; sources from several would misfile it."""
    if len(sources) == 0:
        raise ValueError("sources must hold at least one instance")
    missing = [i for i, ds in enumerate(sources) if "StudyInstanceUID" not in ds]
    if missing:
        raise ValueError(f"sources at positions {missing} have no StudyInstanceUID")
    studies = sorted({str(ds.StudyInstanceUID) for ds in sources})
    if len(studies) > 1:
        raise ValueError(
            "sources must belong to one study, got StudyInstanceUIDs: " + ", ".join(studies)
        )


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
