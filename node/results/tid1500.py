"""The measurement report: a Comprehensive 3D SR holding TID 1500, findings coded and boxed.

Every task's result document. It gives a PACS something it can draw and query:
one TID 1410 planar ROI group per localised finding (the box as a closed
polyline in source pixels, the finding coded), one TID 1501 group per finding
without a box (with the images it refers to, e.g. the CT slices an answer
cites), one TID 1501 group per numeric lab test (:mod:`node.results.labs`), and
the free text (narrative, impression, conclusion, verdicts, lab tests,
disclaimer) in the report-level "Qualitative Evaluations" container. The image
library lists every image the model saw. Pure: headers and findings in, a
``Dataset`` out.

Content tree::

    CONTAINER Imaging Measurement Report (TID 1500)
      HAS CONCEPT MOD  Language of Content Item and Descendants
      HAS OBS CONTEXT  Observer Type = Device, UID / Name / Manufacturer / Model Name
      HAS CONCEPT MOD  Procedure reported = Imaging procedure
      CONTAINS  CONTAINER Image Library > Image Library Group > IMAGE (TID 1601/1602),
                one per source image (none for a PDF: no library then)
      CONTAINS  CONTAINER Imaging Measurements
        CONTAINS  CONTAINER Measurement Group (TID 1410, one per box)
          Tracking Identifier (label) / Tracking Unique Identifier
          HAS CONCEPT MOD  Finding = coded finding
          CONTAINS  SCOORD Image Region POLYLINE (5 points, closed)
          HAS CONCEPT MOD  Algorithm Name / Version / Parameters
        CONTAINS  CONTAINER Measurement Group (TID 1501, one per unboxed finding)
          Tracking Identifier / Tracking Unique Identifier
          CONTAINS  CODE Finding = coded finding
          HAS CONCEPT MOD  Algorithm Name / Version / Parameters
          CONTAINS  IMAGE Source of Measurement (the slices the finding refers to)
        CONTAINS  CONTAINER Measurement Group (TID 1501, one per numeric lab test)
          CONTAINS  NUM LOINC or named test, UCUM unit
            HAS PROPERTIES  TEXT Normal Range Description = reference range
      CONTAINS  CONTAINER Qualitative Evaluations
        CONTAINS  TEXT Comment = disclaimer, TEXT Findings / Impression / Conclusion /
                  Finding ...
"""

from __future__ import annotations

import datetime
import logging
from collections.abc import Sequence

import highdicom as hd
from highdicom.sr import (
    AlgorithmIdentification,
    CodedConcept,
    Comprehensive3DSR,
    ContainerContentItem,
    ContentItem,
    ContentSequence,
    DeviceObserverIdentifyingAttributes,
    GraphicTypeValues,
    ImageRegion,
    MeasurementReport,
    MeasurementsAndQualitativeEvaluations,
    ObservationContext,
    ObserverContext,
    PlanarROIMeasurementsAndQualitativeEvaluations,
    RelationshipTypeValues,
    SourceImageForMeasurementGroup,
    SourceImageForRegion,
    TextContentItem,
    TrackingIdentifier,
)
from pydicom import Dataset
from pydicom.sr.codedict import codes

from node.config import Output
from node.inference.answers import LabResult
from node.results.author import SERIES_NUMBERS, ResultAuthor
from node.results.boxes import box_tracking_uid
from node.results.codes import coded_finding
from node.results.content import algorithm_identification, derived_uid, device_observer_uid
from node.results.disclaimer import TEST_MODEL_BANNER, disclaimer_text
from node.results.image_library import image_library
from node.results.labs import LAB_SCHEME, lab_measurement_group, lab_scheme_identification, lab_text
from node.results.report_input import (
    ImageReference,
    LocalizedFinding,
    check_sources,
    distinct,
)
from node.results.sr import (
    COMPLETION_DESCRIPTION,
    character_set,
    complete_deidentification,
    evidence_header,
    evidence_reference,
)

__all__ = ["build_measurement_report"]

logger = logging.getLogger(__name__)

# TID 1500 row 12: the report-level container for evaluations not tied to a
# region; PS3.16 codes it from UMLS.
QUALITATIVE_EVALUATIONS = CodedConcept("C0034375", "UMLS", "Qualitative Evaluations")
# What was imaged. A chest radiograph has no entry in CID 100 (quantitative
# procedures); "Imaging procedure" is true of every source the node reads.
PROCEDURE_REPORTED = CodedConcept.from_code(codes.SCT.ImagingProcedure)
_IMPRESSION = CodedConcept("121073", "DCM", "Impression")
_CONCLUSION = CodedConcept.from_code(codes.DCM.Conclusion)
_CLINICAL_CONTEXT = CodedConcept.from_code(codes.DCM.History)
_LO_MAX = 64
_TRACKING_ID_MAX = 64

_Group = PlanarROIMeasurementsAndQualitativeEvaluations | MeasurementsAndQualitativeEvaluations


def build_measurement_report(
    sources: Sequence[Dataset],
    findings: Sequence[LocalizedFinding],
    *,
    narrative: str,
    impression: str | None,
    author: ResultAuthor,
    task: str,
    conclusion: str | None = None,
    verdicts: Sequence[str] = (),
    prior_sources: Sequence[Dataset] = (),
    lab_items: Sequence[LabResult] = (),
    context_used: str | None = None,
    previous_versions: Sequence[Dataset] = (),
    instance_number: int = 1,
    series_instance_uid: str | None = None,
    sop_instance_uid: str | None = None,
    now: datetime.datetime | None = None,
) -> Dataset:
    """Build the TID 1500 measurement report on the images (or documents) the model saw.

    Parameters
    ----------
    sources:
        What the model looked at, headers suffice, one study: a radiograph, the
        instances of a volume's sent slices, a WSI level, a document's instances.
        Patient, study, Institution Name and Body Part Examined come from the
        first, boxes refer to the first's pixels. Images (with Rows and Columns)
        are listed in the image library; all are listed as evidence.
    findings:
        Findings in the order the model gave them; boxes in pixels of the first
        source, image references to sources (frames 1-based).
    narrative, impression:
        The model's report text; the narrative must not be empty.
    author, task:
        Which model ran what, and the General Equipment values for this node; a
        test model is marked in the series description, the disclaimer and the
        device observer name.
    conclusion:
        The model's final answer to the question it was asked (a volume's yes/no),
        a TEXT "Conclusion".
    verdicts:
        Per-finding comparison statements, one TEXT item each.
    prior_sources:
        Images of an earlier study the model compared with; listed as evidence.
    lab_items:
        Lab tests extracted from a document: a TEXT item each, and a measurement
        group with a coded NUM each whose result is a number.
    context_used:
        Clinical context given to the model, recorded when not empty.
    previous_versions:
        Earlier reports of the same study and task this one replaces.
    instance_number:
        Number of this instance in its series (numbered by SERIES_NUMBERS).
    series_instance_uid, sop_instance_uid:
        Fixed UIDs for an idempotent retry; new ones when omitted.
    now:
        Content and series date/time; the current local time when omitted.

    Raises
    ------
    ValueError
        Empty narrative, task or model label; no sources or sources of several
        studies; a box without an image to lie on, or outside it; an image
        reference to no source, or to a frame the source doesn't have.
    """
    model_label, is_test_model = author.model_label, author.is_test_model
    for name, value in (("narrative", narrative), ("task", task), ("model_label", model_label)):
        if not value.strip():
            raise ValueError(f"{name} must not be empty or white space only")
    sources = distinct(sources)
    check_sources(sources, findings)
    first = sources[0]
    created = now if now is not None else datetime.datetime.now()
    algorithm = algorithm_identification(model_label, author.software_version, task)
    classes = {str(ds.SOPInstanceUID): str(ds.SOPClassUID) for ds in sources}
    groups: list[_Group] = [
        _finding_group(first, classes, index, finding, algorithm)
        for index, finding in enumerate(findings, 1)
    ]
    lab_groups = [
        lab_measurement_group(lab, index, algorithm, str(first.SOPInstanceUID))
        for index, lab in enumerate(lab_items, 1)
    ]
    groups += [group for group in lab_groups if group is not None]
    groups = groups or [_no_finding_group(first, algorithm)]
    report = MeasurementReport(
        observation_context=_observation_context(author),
        procedure_reported=PROCEDURE_REPORTED,
        imaging_measurements=groups,
    )
    text_items = _text_evaluations(
        disclaimer_text(model_label, is_test_model=is_test_model),
        narrative,
        impression,
        conclusion,
        findings,
        verdicts,
        lab_items,
        context_used,
    )
    root = report[0]
    library = image_library(sources)
    if library is not None:
        _insert_before_measurements(root, library)
    root.ContentSequence.append(_qualitative_evaluations(text_items))
    sr = Comprehensive3DSR(
        # highdicom takes the patient and study from the first; of the rest, UIDs.
        evidence=[
            evidence_header(first),
            *map(evidence_reference, [*sources[1:], *distinct(prior_sources)]),
        ],
        content=report,
        previous_versions=list(previous_versions) or None,
        series_instance_uid=hd.UID(series_instance_uid),
        series_number=SERIES_NUMBERS[Output.SR],
        sop_instance_uid=hd.UID(sop_instance_uid),
        instance_number=instance_number,
        manufacturer=author.manufacturer,
        # A draft by construction: only a human reviewer can complete and verify it.
        is_complete=False,
        is_final=False,
        is_verified=False,
        institution_name=first.get("InstitutionName") or None,
        series_description=author.series_description(task),
        software_versions=author.software_version,
        specific_character_set=character_set(
            first,
            narrative,
            impression or "",
            conclusion or "",
            model_label,
            task,
            *verdicts,
            *(f.label for f in findings),
            *(lab_text(lab) for lab in lab_items),
            context_used or "",
        ),
        content_date=created.date(),
        content_time=created.time(),
        series_date=created.date(),
        series_time=created.time(),
    )
    if "BodyPartExamined" in first:
        sr.BodyPartExamined = first.BodyPartExamined
    if _uses_lab_scheme(groups):
        sr.CodingSchemeIdentificationSequence = [lab_scheme_identification()]
    sr.CompletionFlagDescription = COMPLETION_DESCRIPTION
    complete_deidentification(sr)
    logger.info(
        "built measurement report %s on %d source(s): %d finding(s), %d boxed, "
        "%d with images, %d coded lab test(s), test model: %s",
        sr.SOPInstanceUID,
        len(sources),
        len(findings),
        sum(f.box is not None for f in findings),
        sum(bool(f.images) for f in findings),
        sum(group is not None for group in lab_groups),
        is_test_model,
    )
    return sr


def _uses_lab_scheme(groups: Sequence[_Group]) -> bool:
    """Does a NUM item in the groups name its concept with the node's private lab scheme?"""
    return any(
        item.ConceptNameCodeSequence[0].CodingSchemeDesignator == LAB_SCHEME
        for group in groups
        for item in group[0].ContentSequence
        if item.ValueType == "NUM"
    )


def _observation_context(author: ResultAuthor) -> ObservationContext:
    """TID 1002: the model as the device observer (name marked for a test model)."""
    model_label, is_test_model = author.model_label, author.is_test_model
    # A reader browsing observers must not take a stand-in for MedGemma.
    marked = not is_test_model or "TEST" in model_label.upper()
    name = model_label if marked else f"{TEST_MODEL_BANNER}: {model_label}"
    attributes = DeviceObserverIdentifyingAttributes(
        uid=device_observer_uid(model_label),
        name=name[:_LO_MAX],
        manufacturer_name=author.manufacturer,
        model_name=model_label[:_LO_MAX],
    )
    device = ObserverContext(
        observer_type=codes.cid270.Device, observer_identifying_attributes=attributes
    )
    return ObservationContext(observer_device_context=device)


def _insert_before_measurements(root: Dataset, item: ContentItem) -> None:
    """Put ``item`` where TID 1500 orders it: before the Imaging Measurements container."""
    content = root.ContentSequence
    position = next(
        i for i, child in enumerate(content) if child.name == codes.DCM.ImagingMeasurements
    )
    content.insert(position, item)


def _tracking(source: Dataset, index: int, finding: LocalizedFinding) -> TrackingIdentifier:
    """Label as the human-readable identifier; UID shared with the GSPS for boxes."""
    if finding.box is not None:
        uid = box_tracking_uid(source.SOPInstanceUID, finding.box)
    else:
        uid = derived_uid("finding", source.SOPInstanceUID, str(index), finding.label)
    identifier = f"{index}: {finding.label}"[:_TRACKING_ID_MAX]
    return TrackingIdentifier(uid=uid, identifier=identifier)


def _finding_group(
    source: Dataset,
    classes: dict[str, str],
    index: int,
    finding: LocalizedFinding,
    algorithm: AlgorithmIdentification,
) -> _Group:
    """TID 1410 for a boxed finding, TID 1501 (with its images) for one without a box.

    ``classes`` maps the sources' SOP Instance UIDs to their SOP Class UIDs.
    """
    coded = coded_finding(finding.label)
    tracking = _tracking(source, index, finding)
    if finding.box is None:
        return MeasurementsAndQualitativeEvaluations(
            tracking_identifier=tracking,
            finding_type=coded.concept,
            algorithm_id=algorithm,
            source_images=_source_images(classes, finding.images) or None,
        )
    region = ImageRegion(
        graphic_type=GraphicTypeValues.POLYLINE,
        graphic_data=finding.box.corners(),
        source_image=SourceImageForRegion(
            referenced_sop_class_uid=source.SOPClassUID,
            referenced_sop_instance_uid=source.SOPInstanceUID,
        ),
    )
    return PlanarROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=tracking,
        referenced_region=region,
        finding_type=coded.concept,
        algorithm_id=algorithm,
    )


def _source_images(
    classes: dict[str, str], references: Sequence[ImageReference]
) -> list[SourceImageForMeasurementGroup]:
    """One IMAGE item per instance, listing the frames referenced in a multi-frame one."""
    frames: dict[str, list[int]] = {}
    for reference in references:
        numbers = frames.setdefault(reference.sop_instance_uid, [])
        if reference.frame_number is not None and reference.frame_number not in numbers:
            numbers.append(reference.frame_number)
    return [
        SourceImageForMeasurementGroup(
            referenced_sop_class_uid=classes[uid],
            referenced_sop_instance_uid=uid,
            referenced_frame_numbers=sorted(numbers) or None,
        )
        for uid, numbers in frames.items()
    ]


def _no_finding_group(
    source: Dataset, algorithm: AlgorithmIdentification
) -> MeasurementsAndQualitativeEvaluations:
    """TID 1500 needs one measurement group; with no findings it says only who looked."""
    return MeasurementsAndQualitativeEvaluations(
        tracking_identifier=TrackingIdentifier(
            uid=derived_uid("no-findings", source.SOPInstanceUID),
            identifier="no localized findings",
        ),
        algorithm_id=algorithm,
    )


def _text(name: CodedConcept | hd.sr.CodedConcept, value: str) -> TextContentItem:
    return TextContentItem(
        name=name, value=value, relationship_type=RelationshipTypeValues.CONTAINS
    )


def _text_evaluations(
    disclaimer: str,
    narrative: str,
    impression: str | None,
    conclusion: str | None,
    findings: Sequence[LocalizedFinding],
    verdicts: Sequence[str],
    lab_items: Sequence[LabResult],
    context_used: str | None,
) -> list[TextContentItem]:
    """The free text, in reading order: disclaimer first, so a viewer shows it on top."""
    finding_name = CodedConcept.from_code(codes.DCM.Finding)
    items = [_text(CodedConcept.from_code(codes.DCM.Comment), disclaimer)]
    items.append(_text(CodedConcept.from_code(codes.LN.Findings), narrative))
    if impression is not None and impression.strip():
        items.append(_text(_IMPRESSION, impression))
    if conclusion is not None and conclusion.strip():
        items.append(_text(_CONCLUSION, conclusion))
    # Labels no code fitted keep their words here, next to the coded ones.
    items += [_text(finding_name, f.label) for f in findings if coded_finding(f.label).is_free_text]
    items += [_text(finding_name, verdict) for verdict in verdicts if verdict.strip()]
    items += [_text(finding_name, lab_text(lab)) for lab in lab_items]
    if context_used is not None and context_used.strip():
        items.append(_text(_CLINICAL_CONTEXT, context_used))
    return items


def _qualitative_evaluations(items: Sequence[ContentItem]) -> ContainerContentItem:
    container = ContainerContentItem(
        name=QUALITATIVE_EVALUATIONS, relationship_type=RelationshipTypeValues.CONTAINS
    )
    container.ContentSequence = ContentSequence(list(items))
    return container
