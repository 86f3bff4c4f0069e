"""SR content items the node's documents are built from.

One small function per content item or sub-tree, in the manner of highdicom's
``sr/content.py``, so the findings document here and a later TID 1500
measurement report can share the observer, algorithm and source-image parts.
Pure: no I/O, no clocks.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence

import highdicom as hd
from highdicom.sr import (
    AlgorithmIdentification,
    CodedConcept,
    CompositeContentItem,
    ContainerContentItem,
    ContentItem,
    ContentSequence,
    DeviceObserverIdentifyingAttributes,
    ImageContentItem,
    ObserverContext,
    RelationshipTypeValues,
    TextContentItem,
)
from pydicom import Dataset
from pydicom.sr.codedict import codes

__all__ = [
    "algorithm_identification",
    "clinical_context_section",
    "device_observer_context",
    "derived_uid",
    "device_observer_uid",
    "disclaimer_item",
    "findings_section",
    "report_title",
    "source_reference",
    "source_references",
]

logger = logging.getLogger(__name__)

# Namespace for UIDs derived from names: the same model label always yields the
# same Device Observer UID, so a PACS can group documents by model.
_UID_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "urn:medgemma-node:dicom")


def derived_uid(*parts: str) -> hd.UID:
    """Return a deterministic ``2.25`` UID for ``parts``.

    Used where two objects or two runs must agree on a UID without sharing
    state (device observer UID now, SR <-> GSPS tracking UIDs later).
    """
    name = "\x1f".join(parts)
    return hd.UID.from_uuid(str(uuid.uuid5(_UID_NAMESPACE, name)))


def device_observer_uid(model_label: str) -> hd.UID:
    """Return the Device Observer UID that stands for ``model_label``."""
    return derived_uid("device-observer", model_label)


def device_observer_context(model_label: str, manufacturer: str) -> ObserverContext:
    """TID 1002 observer context naming the model as the (device) observer."""
    attributes = DeviceObserverIdentifyingAttributes(
        uid=device_observer_uid(model_label),
        name=model_label,
        manufacturer_name=manufacturer,
    )
    return ObserverContext(
        observer_type=codes.cid270.Device,
        observer_identifying_attributes=attributes,
    )


def algorithm_identification(
    model_label: str, software_version: str, task: str
) -> AlgorithmIdentification:
    """TID 4019 algorithm identification: which model, run how, for what task.

    The model weights carry no version of their own here, so the version is
    the node's: it fixes prompts and pre-processing, which shape the output.
    """
    return AlgorithmIdentification(
        name=model_label,
        version=software_version,
        parameters=[f"task={task}"],
    )


def disclaimer_item(text: str) -> TextContentItem:
    """The disclaimer as a TEXT "Comment" directly under the root.

    No standard code means "disclaimer"; a Comment at the top of the tree is
    what report viewers render first.
    """
    return TextContentItem(
        name=codes.DCM.Comment,
        value=text,
        relationship_type=RelationshipTypeValues.CONTAINS,
    )


def clinical_context_section(context: str) -> ContainerContentItem:
    """A "History" section holding the clinical context the model was given."""
    section = ContainerContentItem(
        name=codes.DCM.History,
        relationship_type=RelationshipTypeValues.CONTAINS,
    )
    section.ContentSequence = ContentSequence(
        [
            TextContentItem(
                name=codes.DCM.History,
                value=context,
                relationship_type=RelationshipTypeValues.CONTAINS,
            )
        ]
    )
    return section


def source_reference(source: Dataset) -> ContentItem:
    """An INFERRED FROM reference to one source instance.

    Images become IMAGE items (viewers can jump to them); anything without
    pixel geometry falls back to COMPOSITE, which the IOD allows for any SOP.
    """
    relationship = RelationshipTypeValues.INFERRED_FROM
    if "Rows" in source:
        return ImageContentItem(
            name=codes.DCM.SourceImage,
            referenced_sop_class_uid=source.SOPClassUID,
            referenced_sop_instance_uid=source.SOPInstanceUID,
            relationship_type=relationship,
        )
    return CompositeContentItem(
        name=codes.DCM.SourceImage,
        referenced_sop_class_uid=source.SOPClassUID,
        referenced_sop_instance_uid=source.SOPInstanceUID,
        relationship_type=relationship,
    )


def source_references(sources: Sequence[Dataset]) -> list[ContentItem]:
    """References to each distinct source instance, in the order given."""
    # A pipeline may hand the same instance twice (e.g. several frames of it).
    first_by_uid: dict[str, Dataset] = {}
    for ds in sources:
        first_by_uid.setdefault(ds.SOPInstanceUID, ds)
    return [source_reference(ds) for ds in first_by_uid.values()]


def findings_section(
    findings: str,
    *,
    algorithm: AlgorithmIdentification,
    sources: Sequence[Dataset],
    items: Sequence[str] = (),
) -> ContainerContentItem:
    """A "Findings" section: the generated text, how it was made, and from what.

    The algorithm identification modifies the section (it applies to every
    finding in it); the source references hang off the finding itself.
    """
    finding = TextContentItem(
        name=codes.DCM.Finding,
        value=findings,
        relationship_type=RelationshipTypeValues.CONTAINS,
    )
    finding.ContentSequence = ContentSequence(source_references(sources))
    section = ContainerContentItem(
        name=codes.DCM.Findings,
        relationship_type=RelationshipTypeValues.CONTAINS,
    )
    # Structured answers (one lab test, one box) each become a finding of their own.
    more = [
        TextContentItem(
            name=codes.DCM.Finding, value=item, relationship_type=RelationshipTypeValues.CONTAINS
        )
        for item in items
    ]
    section.ContentSequence = ContentSequence([*algorithm, finding, *more])
    return section


def report_title() -> CodedConcept:
    """Concept name of the root container."""
    return CodedConcept.from_code(codes.LN.DiagnosticImagingReport)
