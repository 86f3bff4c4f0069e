"""The measurement report: a Comprehensive 3D SR holding TID 1500, findings coded and boxed.

Where ``node.results.sr`` writes the model's text, this document gives a PACS
something it can draw and query: one TID 1410 planar ROI group per localised
finding (the box as a closed polyline in source pixels, the finding coded),
one TID 1501 group per finding without a box, and the free text (narrative,
impression, verdicts, lab tests, disclaimer) in the report-level "Qualitative
Evaluations" container. Pure: headers and findings in, a ``Dataset`` out.

Content tree::

    CONTAINER Imaging Measurement Report (TID 1500)
      HAS CONCEPT MOD  Language of Content Item and Descendants
      HAS OBS CONTEXT  Observer Type = Device, UID / Name / Manufacturer / Model Name
      HAS CONCEPT MOD  Procedure reported = Imaging procedure
      CONTAINS  CONTAINER Image Library > Image Library Group > IMAGE (TID 1601/1602)
      CONTAINS  CONTAINER Imaging Measurements
        CONTAINS  CONTAINER Measurement Group (TID 1410, one per box)
          Tracking Identifier (label) / Tracking Unique Identifier
          HAS CONCEPT MOD  Finding = coded finding
          CONTAINS  SCOORD Image Region POLYLINE (5 points, closed)
          HAS CONCEPT MOD  Algorithm Name / Version / Parameters
        CONTAINS  CONTAINER Measurement Group (TID 1501, one per unboxed finding)
      CONTAINS  CONTAINER Qualitative Evaluations
        CONTAINS  TEXT Comment = disclaimer, TEXT Findings / Impression / Finding ...
"""

from __future__ import annotations

import datetime
import logging
from collections.abc import Sequence
from dataclasses import dataclass

import highdicom as hd
from highdicom.sr import (
    AlgorithmIdentification,
    CodeContentItem,
    CodedConcept,
    Comprehensive3DSR,
    ContainerContentItem,
    ContentItem,
    ContentSequence,
    DeviceObserverIdentifyingAttributes,
    GraphicTypeValues,
    ImageContentItem,
    ImageRegion,
    MeasurementReport,
    MeasurementsAndQualitativeEvaluations,
    NumContentItem,
    ObservationContext,
    ObserverContext,
    PlanarROIMeasurementsAndQualitativeEvaluations,
    RelationshipTypeValues,
    SourceImageForRegion,
    TextContentItem,
    TrackingIdentifier,
)
from pydicom import Dataset
from pydicom.sr.codedict import codes

from node import MANUFACTURER, __version__
from node.inference.answers import LabResult
from node.results.boxes import SourceBox, box_tracking_uid
from node.results.codes import coded_finding
from node.results.content import algorithm_identification, derived_uid, device_observer_uid
from node.results.disclaimer import TEST_MODEL_BANNER, disclaimer_text
from node.results.sr import (
    COMPLETION_DESCRIPTION,
    character_set,
    complete_deidentification,
    evidence_header,
)

__all__ = ["LocalizedFinding", "build_measurement_report", "measurement_series_description"]

logger = logging.getLogger(__name__)

# TID 1500 row 12: the report-level container for evaluations not tied to a
# region; PS3.16 codes it from UMLS.
QUALITATIVE_EVALUATIONS = CodedConcept("C0034375", "UMLS", "Qualitative Evaluations")
# What was imaged. A chest radiograph has no entry in CID 100 (quantitative
# procedures); "Imaging procedure" is true of every source the node reads.
PROCEDURE_REPORTED = CodedConcept.from_code(codes.SCT.ImagingProcedure)
# The SCT concept PS3.16 (and highdicom's TID 1600) names library images with.
_SOURCE = CodedConcept("260753009", "SCT", "Source")
_PIXELS = CodedConcept("{pixels}", "UCUM", "Pixels")
_IMPRESSION = CodedConcept("121073", "DCM", "Impression")
_CLINICAL_CONTEXT = CodedConcept.from_code(codes.DCM.History)
_LO_MAX = 64
_TRACKING_ID_MAX = 64


@dataclass(frozen=True)
class LocalizedFinding:
    """A finding the model named, with its box in source pixels when it gave one."""

    label: str
    box: SourceBox | None = None


def measurement_series_description(task: str, model_label: str, *, is_test_model: bool) -> str:
    """Series Description naming task and model, TEST MODEL first when so (LO: 64)."""
    prefix = "TEST MODEL " if is_test_model else ""
    text = f"{prefix}AI {task} {model_label} (UNVERIFIED)"
    if len(text) > _LO_MAX:
        # The model label is the longest part and the least useful in a list.
        text = f"{prefix}AI {task} (UNVERIFIED)"
    return text[:_LO_MAX]


def build_measurement_report(
    source: Dataset,
    findings: Sequence[LocalizedFinding],
    *,
    narrative: str,
    impression: str | None,
    model_label: str,
    is_test_model: bool,
    task: str,
    verdicts: Sequence[str] = (),
    prior_sources: Sequence[Dataset] = (),
    lab_items: Sequence[LabResult] = (),
    context_used: str | None = None,
    previous_versions: Sequence[Dataset] = (),
    series_number: int = 9902,
    instance_number: int = 1,
    manufacturer: str = MANUFACTURER,
    software_version: str = __version__,
    series_instance_uid: str | None = None,
    sop_instance_uid: str | None = None,
    now: datetime.datetime | None = None,
) -> Dataset:
    """Build the TID 1500 measurement report for one source image.

    Parameters
    ----------
    source:
        The image the model looked at (a header suffices); patient, study and
        Body Part Examined are copied from it and boxes refer to its pixels.
    findings:
        Findings in the order the model gave them; boxes in source pixels.
    narrative, impression:
        The model's report text; the narrative must not be empty.
    model_label, is_test_model, task:
        Which model ran what; a test model is marked in the series description,
        the disclaimer and the device observer name.
    verdicts:
        Per-finding comparison statements, one TEXT item each.
    prior_sources:
        Images of an earlier study the model compared with; listed as evidence.
    lab_items:
        Lab tests extracted from a document, one TEXT item each.
    context_used:
        Clinical context given to the model, recorded when not empty.
    previous_versions:
        Earlier reports of the same study and task this one replaces.
    series_number, instance_number, manufacturer, software_version:
        As for :func:`node.results.sr.build_findings_sr`.
    series_instance_uid, sop_instance_uid:
        Fixed UIDs for an idempotent retry; new ones when omitted.
    now:
        Content and series date/time; the current local time when omitted.

    Raises
    ------
    ValueError
        Empty narrative, task or model label; a source without pixel geometry;
        a box outside the source image.
    """
    for name, value in (("narrative", narrative), ("task", task), ("model_label", model_label)):
        if not value.strip():
            raise ValueError(f"{name} must not be empty or white space only")
    _check_source(source, findings)
    created = now if now is not None else datetime.datetime.now()
    algorithm = algorithm_identification(model_label, software_version, task)
    groups = [
        _finding_group(source, index, finding, algorithm)
        for index, finding in enumerate(findings, 1)
    ] or [_no_finding_group(source, algorithm)]
    report = MeasurementReport(
        observation_context=_observation_context(model_label, is_test_model, manufacturer),
        procedure_reported=PROCEDURE_REPORTED,
        imaging_measurements=groups,
    )
    text_items = _text_evaluations(
        disclaimer_text(model_label, is_test_model=is_test_model),
        narrative,
        impression,
        findings,
        verdicts,
        lab_items,
        context_used,
    )
    root = report[0]
    _insert_before_measurements(root, _image_library(source))
    root.ContentSequence.append(_qualitative_evaluations(text_items))
    header = evidence_header(source)
    sr = Comprehensive3DSR(
        evidence=[header, *(evidence_header(ds) for ds in prior_sources)],
        content=report,
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
        institution_name=source.get("InstitutionName") or None,
        series_description=measurement_series_description(
            task, model_label, is_test_model=is_test_model
        ),
        software_versions=software_version,
        specific_character_set=character_set(
            source,
            narrative,
            impression or "",
            model_label,
            task,
            *verdicts,
            *(f.label for f in findings),
            *(_lab_text(lab) for lab in lab_items),
            context_used or "",
        ),
        content_date=created.date(),
        content_time=created.time(),
        series_date=created.date(),
        series_time=created.time(),
    )
    if "BodyPartExamined" in source:
        sr.BodyPartExamined = source.BodyPartExamined
    sr.CompletionFlagDescription = COMPLETION_DESCRIPTION
    complete_deidentification(sr)
    logger.info(
        "built measurement report %s: %d finding(s), %d boxed, test model: %s",
        sr.SOPInstanceUID,
        len(findings),
        sum(f.box is not None for f in findings),
        is_test_model,
    )
    return sr


def _check_source(source: Dataset, findings: Sequence[LocalizedFinding]) -> None:
    uid = source.get("SOPInstanceUID", "<no SOPInstanceUID>")
    if "Rows" not in source or "Columns" not in source:
        raise ValueError(f"source {uid} has no Rows/Columns: boxes need an image")
    rows, columns = int(source.Rows), int(source.Columns)
    for finding in findings:
        box = finding.box
        if box is None:
            continue
        if not (0 <= box.top < box.bottom <= rows and 0 <= box.left < box.right <= columns):
            raise ValueError(
                f"finding {finding.label!r}: box {box} is not inside source {uid} "
                f"({columns} columns × {rows} rows); map it with node.results.boxes"
            )


def _observation_context(
    model_label: str, is_test_model: bool, manufacturer: str
) -> ObservationContext:
    """TID 1002: the model as the device observer (name marked for a test model)."""
    # A reader browsing observers must not take a stand-in for MedGemma.
    marked = not is_test_model or "TEST" in model_label.upper()
    name = model_label if marked else f"{TEST_MODEL_BANNER}: {model_label}"
    attributes = DeviceObserverIdentifyingAttributes(
        uid=device_observer_uid(model_label),
        name=name[:_LO_MAX],
        manufacturer_name=manufacturer,
        model_name=model_label[:_LO_MAX],
    )
    device = ObserverContext(
        observer_type=codes.cid270.Device, observer_identifying_attributes=attributes
    )
    return ObservationContext(observer_device_context=device)


def _image_library(source: Dataset) -> ContainerContentItem:
    """TID 1600 with one TID 1601 entry, built here rather than by highdicom.

    highdicom's TID 1603 (projection radiography descriptors) reads Imager
    Pixel Spacing unconditionally; CR (RG1_UNCR among them) often has none.
    The descriptors below are the ones every image has.
    """
    acquisition = RelationshipTypeValues.HAS_ACQ_CONTEXT
    descriptors: list[ContentItem] = [
        CodeContentItem(
            name=codes.DCM.Modality,
            value=_coded_modality(source),
            relationship_type=acquisition,
        ),
        NumContentItem(
            name=codes.DCM.PixelDataRows,
            value=int(source.Rows),
            unit=_PIXELS,
            relationship_type=acquisition,
        ),
        NumContentItem(
            name=codes.DCM.PixelDataColumns,
            value=int(source.Columns),
            unit=_PIXELS,
            relationship_type=acquisition,
        ),
    ]
    orientation = source.get("PatientOrientation")
    if orientation is not None and len(orientation) == 2:
        descriptors += [
            TextContentItem(
                name=codes.DCM.PatientOrientationRow,
                value=str(orientation[0]),
                relationship_type=acquisition,
            ),
            TextContentItem(
                name=codes.DCM.PatientOrientationColumn,
                value=str(orientation[1]),
                relationship_type=acquisition,
            ),
        ]
    image = ImageContentItem(
        name=_SOURCE,
        referenced_sop_class_uid=source.SOPClassUID,
        referenced_sop_instance_uid=source.SOPInstanceUID,
        relationship_type=RelationshipTypeValues.CONTAINS,
    )
    image.ContentSequence = ContentSequence(descriptors)
    group = ContainerContentItem(
        name=codes.DCM.ImageLibraryGroup, relationship_type=RelationshipTypeValues.CONTAINS
    )
    group.ContentSequence = ContentSequence([image])
    library = ContainerContentItem(
        name=codes.DCM.ImageLibrary, relationship_type=RelationshipTypeValues.CONTAINS
    )
    library.ContentSequence = ContentSequence([group])
    return library


def _coded_modality(source: Dataset) -> CodedConcept:
    """The CID 29 modality code for the source's Modality (DCM codes are the values)."""
    modality = str(source.get("Modality", "OT"))
    return CodedConcept(modality, "DCM", _MODALITY_MEANINGS.get(modality, modality))


_MODALITY_MEANINGS = {
    "CR": "Computed Radiography",
    "DX": "Digital Radiography",
    "CT": "Computed Tomography",
    "MR": "Magnetic Resonance",
    "OT": "Other",
}


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
    source: Dataset, index: int, finding: LocalizedFinding, algorithm: AlgorithmIdentification
) -> PlanarROIMeasurementsAndQualitativeEvaluations | MeasurementsAndQualitativeEvaluations:
    """TID 1410 for a boxed finding, TID 1501 for one without a box."""
    coded = coded_finding(finding.label)
    tracking = _tracking(source, index, finding)
    if finding.box is None:
        return MeasurementsAndQualitativeEvaluations(
            tracking_identifier=tracking,
            finding_type=coded.concept,
            algorithm_id=algorithm,
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
    findings: Sequence[LocalizedFinding],
    verdicts: Sequence[str],
    lab_items: Sequence[LabResult],
    context_used: str | None,
) -> list[TextContentItem]:
    """The free text, in reading order: disclaimer first, as in the findings SR."""
    finding_name = CodedConcept.from_code(codes.DCM.Finding)
    items = [_text(CodedConcept.from_code(codes.DCM.Comment), disclaimer)]
    items.append(_text(CodedConcept.from_code(codes.LN.Findings), narrative))
    if impression is not None and impression.strip():
        items.append(_text(_IMPRESSION, impression))
    # Labels no code fitted keep their words here, next to the coded ones.
    items += [_text(finding_name, f.label) for f in findings if coded_finding(f.label).is_free_text]
    items += [_text(finding_name, verdict) for verdict in verdicts if verdict.strip()]
    items += [_text(finding_name, _lab_text(lab)) for lab in lab_items]
    if context_used is not None and context_used.strip():
        items.append(_text(_CLINICAL_CONTEXT, context_used))
    return items


def _lab_text(lab: LabResult) -> str:
    parts = [f"{lab.name}: {lab.result}"]
    if lab.unit:
        parts.append(lab.unit)
    if lab.range:
        parts.append(f"(range {lab.range})")
    if lab.sample_collection_time:
        parts.append(f"collected {lab.sample_collection_time}")
    return " ".join(parts)


def _qualitative_evaluations(items: Sequence[ContentItem]) -> ContainerContentItem:
    container = ContainerContentItem(
        name=QUALITATIVE_EVALUATIONS, relationship_type=RelationshipTypeValues.CONTAINS
    )
    container.ContentSequence = ContentSequence(list(items))
    return container
