"""The boxes as a Grayscale Softcopy Presentation State over the source image.

Every PACS viewer that shows a CR/DX shows its presentation states: selecting
this one draws the model's rectangles and labels on the untouched source, with
the source's own window. Pure: a header and boxes in, a ``Dataset`` out.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import highdicom as hd
from highdicom import PresentationLUTShapeValues, PresentationLUTTransformation
from highdicom.pr import (
    AnnotationUnitsValues,
    GraphicAnnotation,
    GraphicLayer,
    GraphicObject,
    GraphicTypeValues,
    GrayscaleSoftcopyPresentationState,
    TextJustificationValues,
    TextObject,
)
from pydicom import Dataset

from node.config import Output
from node.results.author import SERIES_NUMBERS, ResultAuthor, follow_source
from node.results.boxes import SourceBox, box_tracking_uid
from node.results.disclaimer import TEST_MODEL_BANNER

__all__ = ["build_gsps", "gsps_content_label"]

logger = logging.getLogger(__name__)

_LAYER = "AI FINDINGS"
_LO_MAX = 64
# Graphic Annotation text (Unformatted Text Value) is ST: 1024 characters.
_ST_MAX = 1024


def gsps_content_label(*, is_test_model: bool) -> str:
    """Content Label (CS: upper case, 16 characters) a viewer lists the state by."""
    return "AI TEST MODEL" if is_test_model else "AI FINDINGS"


def build_gsps(
    source: Dataset,
    boxes: Sequence[SourceBox],
    *,
    author: ResultAuthor,
) -> Dataset:
    """Build a GSPS drawing ``boxes`` (source pixels) and their labels on ``source``.

    Parameters
    ----------
    source:
        The image the boxes refer to; needs its pixel description (Rows,
        Columns, Photometric Interpretation…) but not its pixel data.
    boxes:
        Rectangles from :func:`node.results.boxes.map_boxes`; may be empty (the
        state then only carries the warning text).
    author:
        The model is named in the content description and on the image; a test
        model is marked TEST MODEL in both.

    Raises
    ------
    ValueError
        A box outside the source image.
    """
    _check_boxes(source, boxes)
    model_label, is_test_model = author.model_label, author.is_test_model
    layer = GraphicLayer(
        layer_name=_LAYER, order=1, description=f"Findings of {model_label}"[:_LO_MAX]
    )
    annotation = GraphicAnnotation(
        referenced_images=[source],
        graphic_layer=layer,
        graphic_objects=[_rectangle(source, box) for box in boxes] or None,
        text_objects=[_warning(model_label, is_test_model)]
        + [_label(source, box) for box in boxes],
    )
    gsps = GrayscaleSoftcopyPresentationState(
        referenced_images=[source],
        series_instance_uid=hd.UID(),
        series_number=SERIES_NUMBERS[Output.GSPS],
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer=author.manufacturer,
        manufacturer_model_name=model_label[:_LO_MAX],
        software_versions=author.software_version,
        device_serial_number="",
        content_label=gsps_content_label(is_test_model=is_test_model),
        content_description=author.series_description("boxes"),
        graphic_annotations=[annotation],
        graphic_layers=[layer],
        institution_name=source.get("InstitutionName") or None,
        # The source's VOI (window or VOI LUT) is copied by highdicom from the
        # referenced image; only the presentation LUT needs saying, because
        # highdicom's IDENTITY would show a MONOCHROME1 image inverted.
        presentation_lut_transformation=_presentation_lut(source),
    )
    follow_source(gsps, source, author.series_description("boxes"))
    logger.info("built GSPS %s with %d box(es)", gsps.SOPInstanceUID, len(boxes))
    return gsps


def _presentation_lut(source: Dataset) -> PresentationLUTTransformation:
    monochrome1 = str(source.get("PhotometricInterpretation", "")).upper() == "MONOCHROME1"
    shape = (
        PresentationLUTShapeValues.INVERSE if monochrome1 else PresentationLUTShapeValues.IDENTITY
    )
    return PresentationLUTTransformation(presentation_lut_shape=shape)


def _check_boxes(source: Dataset, boxes: Sequence[SourceBox]) -> None:
    rows, columns = int(source.Rows), int(source.Columns)
    for box in boxes:
        if not (0 <= box.top < box.bottom <= rows and 0 <= box.left < box.right <= columns):
            raise ValueError(
                f"box {box} is not inside source {source.SOPInstanceUID} "
                f"({columns} columns × {rows} rows)"
            )


def _rectangle(source: Dataset, box: SourceBox) -> GraphicObject:
    """A closed 5-point POLYLINE, tracked with the UID the SR's group for it has."""
    return GraphicObject(
        graphic_type=GraphicTypeValues.POLYLINE,
        graphic_data=box.corners(),
        units=AnnotationUnitsValues.PIXEL,
        tracking_id=box.label[:_LO_MAX],
        tracking_uid=box_tracking_uid(source.SOPInstanceUID, box),
    )


def _label(source: Dataset, box: SourceBox) -> TextObject:
    """The label just inside the box's top-left corner (always on the image)."""
    return TextObject(
        text_value=box.label[:_ST_MAX],
        units=AnnotationUnitsValues.PIXEL,
        anchor_point=(box.left, box.top),
        anchor_point_visible=False,
        text_justification=TextJustificationValues.LEFT,
        tracking_id=box.label[:_LO_MAX],
        # The same finding as the rectangle, so the same tracking UID.
        tracking_uid=box_tracking_uid(source.SOPInstanceUID, box),
    )


def _warning(model_label: str, is_test_model: bool) -> TextObject:
    """A line across the top of the image: no one sees these boxes without it."""
    text = f"NOT FOR DIAGNOSTIC USE - AI ({model_label}) - UNVERIFIED"
    if is_test_model:
        text = f"{TEST_MODEL_BANNER} - {text}"
    # DISPLAY units: the banner stays legible at any zoom, whatever the image size.
    return TextObject(
        text_value=text[:_ST_MAX],
        units=AnnotationUnitsValues.DISPLAY,
        bounding_box=(0.01, 0.01, 0.99, 0.05),
        text_justification=TextJustificationValues.LEFT,
    )
