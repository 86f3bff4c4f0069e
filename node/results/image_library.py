"""TID 1600 Image Library: one TID 1601 entry per image the model saw.

Built here rather than by highdicom: its TID 1603 (projection radiography
descriptors) reads Imager Pixel Spacing unconditionally, and CR (RG1_UNCR among
them) often has none. Each entry carries the TID 1602 descriptors every image
has, which hold for multi-frame objects too (a WSI level, a scanned document:
Rows and Columns are a frame's). Pure.
"""

from __future__ import annotations

from collections.abc import Sequence

from highdicom.sr import (
    CodeContentItem,
    CodedConcept,
    ContainerContentItem,
    ContentItem,
    ContentSequence,
    ImageContentItem,
    NumContentItem,
    RelationshipTypeValues,
    TextContentItem,
)
from pydicom import Dataset
from pydicom.sr.codedict import codes

__all__ = ["image_library", "is_image"]

# The SCT concept PS3.16 (and highdicom's TID 1600) names library images with.
_SOURCE = CodedConcept("260753009", "SCT", "Source")
_PIXELS = CodedConcept("{pixels}", "UCUM", "Pixels")


def is_image(ds: Dataset) -> bool:
    """An image to list (and to draw on); an encapsulated PDF is not one."""
    return "Rows" in ds and "Columns" in ds


def image_library(sources: Sequence[Dataset]) -> ContainerContentItem | None:
    """TID 1600 with one TID 1601 entry per image among ``sources``; None when none is one.

    Sources that are no image (an encapsulated PDF) are evidence only. TID 1500
    makes the library optional, and an empty container would not be valid.
    """
    images = [ds for ds in sources if is_image(ds)]
    if not images:
        return None
    group = ContainerContentItem(
        name=codes.DCM.ImageLibraryGroup, relationship_type=RelationshipTypeValues.CONTAINS
    )
    group.ContentSequence = ContentSequence([_entry(ds) for ds in images])
    library = ContainerContentItem(
        name=codes.DCM.ImageLibrary, relationship_type=RelationshipTypeValues.CONTAINS
    )
    library.ContentSequence = ContentSequence([group])
    return library


def _entry(source: Dataset) -> ImageContentItem:
    """TID 1601: the image and the TID 1602 descriptors every image has."""
    acquisition = RelationshipTypeValues.HAS_ACQ_CONTEXT
    descriptors: list[ContentItem] = []
    modality = _coded_modality(source)
    if modality is not None:
        descriptors.append(
            CodeContentItem(name=codes.DCM.Modality, value=modality, relationship_type=acquisition)
        )
    descriptors += [
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
    return image


def _coded_modality(source: Dataset) -> CodedConcept | None:
    """The CID 29 (acquisition modality) code for the source's Modality; None outside it.

    The descriptor is optional, and CID 29 has no "OT" or "DOC": a scanned
    document is listed without one rather than with a code the group lacks.
    """
    modality = str(source.get("Modality", ""))
    meaning = _CID29_MEANINGS.get(modality)
    return CodedConcept(modality, "DCM", meaning) if meaning is not None else None


# The CID 29 modalities the node can be sent (DCM codes are the modality values).
_CID29_MEANINGS = {
    "CR": "Computed Radiography",
    "DX": "Digital Radiography",
    "RG": "Radiographic imaging",
    "CT": "Computed Tomography",
    "MR": "Magnetic Resonance",
    "SM": "Slide Microscopy",
    "XC": "External-camera Photography",
}
