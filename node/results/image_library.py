"""TID 1600 Image Library: one TID 1601 entry per image the model saw.

Built here rather than by highdicom: its TID 1603 (projection radiography
descriptors) reads Imager Pixel Spacing unconditionally, and CR (RG1_UNCR among
them) often has none. Images that share the TID 1602 descriptors every image has
(Modality, Rows, Columns, Patient Orientation; for multi-frame objects a frame's
Rows and Columns) form one Image Library Group, which states them once (TID 1600
row 3) over bare image entries: a CT's 85 slices are 85 IMAGE items under one set
of descriptors, not 85 × 4 items, which made the report four times larger and
its construction (highdicom copies and searches the whole tree) as much slower.
Pure.
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
    """TID 1600 with a group for each set of shared descriptors; None when no source is
    an image.

    Sources that are no image (an encapsulated PDF) are evidence only. TID 1500
    makes the library optional, and an empty container would not be valid. Groups
    come in the order of their first image, and images in the order given.
    """
    groups: dict[_Descriptors, list[Dataset]] = {}
    for ds in sources:
        if is_image(ds):
            groups.setdefault(_descriptors(ds), []).append(ds)
    if not groups:
        return None
    library = ContainerContentItem(
        name=codes.DCM.ImageLibrary, relationship_type=RelationshipTypeValues.CONTAINS
    )
    library.ContentSequence = ContentSequence(
        [_group(shared, images) for shared, images in groups.items()]
    )
    return library


# (coded modality, rows, columns, patient orientation row and column)
_Descriptors = tuple[CodedConcept | None, int, int, tuple[str, str] | None]


def _descriptors(source: Dataset) -> _Descriptors:
    orientation = source.get("PatientOrientation")
    pair = (
        (str(orientation[0]), str(orientation[1]))
        if orientation is not None and len(orientation) == 2
        else None
    )
    return _coded_modality(source), int(source.Rows), int(source.Columns), pair


def _group(shared: _Descriptors, images: list[Dataset]) -> ContainerContentItem:
    """An Image Library Group: the TID 1602 descriptors its images share, then a TID 1601
    entry for each."""
    group = ContainerContentItem(
        name=codes.DCM.ImageLibraryGroup, relationship_type=RelationshipTypeValues.CONTAINS
    )
    group.ContentSequence = ContentSequence(
        [*_descriptor_items(shared), *(_entry(ds) for ds in images)]
    )
    return group


def _descriptor_items(shared: _Descriptors) -> list[ContentItem]:
    modality, rows, columns, orientation = shared
    acquisition = RelationshipTypeValues.HAS_ACQ_CONTEXT
    items: list[ContentItem] = []
    if modality is not None:
        items.append(
            CodeContentItem(name=codes.DCM.Modality, value=modality, relationship_type=acquisition)
        )
    items += [
        NumContentItem(
            name=codes.DCM.PixelDataRows, value=rows, unit=_PIXELS, relationship_type=acquisition
        ),
        NumContentItem(
            name=codes.DCM.PixelDataColumns,
            value=columns,
            unit=_PIXELS,
            relationship_type=acquisition,
        ),
    ]
    if orientation is not None:
        items += [
            TextContentItem(
                name=codes.DCM.PatientOrientationRow,
                value=orientation[0],
                relationship_type=acquisition,
            ),
            TextContentItem(
                name=codes.DCM.PatientOrientationColumn,
                value=orientation[1],
                relationship_type=acquisition,
            ),
        ]
    return items


def _entry(source: Dataset) -> ImageContentItem:
    """TID 1601: the image; its descriptors are its group's."""
    return ImageContentItem(
        name=_SOURCE,
        referenced_sop_class_uid=source.SOPClassUID,
        referenced_sop_instance_uid=source.SOPInstanceUID,
        relationship_type=RelationshipTypeValues.CONTAINS,
    )


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
