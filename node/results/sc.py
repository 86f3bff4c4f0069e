"""The burned-in fallback: an RGB Secondary Capture with boxes and a warning banner.

For viewers that ignore presentation states and SR (many web viewers, film
printers, teleradiology forwarders): the boxes, the impression and the warning
are pixels, so they cannot be lost on the way. Pure: pixels in, a ``Dataset``
out.
"""

from __future__ import annotations

import logging
import textwrap
from collections.abc import Sequence

import highdicom as hd
import numpy as np
from PIL import Image, ImageDraw, ImageFont
from pydicom import Dataset
from pydicom.uid import ExplicitVRLittleEndian

from node.config import Output
from node.imaging.radiograph import RadiographImage
from node.results.author import SERIES_NUMBERS, ResultAuthor, follow_source
from node.results.boxes import SourceBox
from node.results.disclaimer import TEST_MODEL_BANNER

__all__ = ["banner_lines", "build_burned_in_sc", "render_burned_in"]

logger = logging.getLogger(__name__)

_BOX_COLOUR = (255, 200, 0)  # amber: visible on both black lung and white bone
_BANNER_BACKGROUND = (0, 0, 0)
_BANNER_TEXT = (255, 255, 0)
_TEST_TEXT = (255, 64, 64)
_LO_MAX = 64
# Font height as a share of the image width: legible on a 2k radiograph
# shown whole on a reading monitor, and on a 512-pixel one.
_FONT_SHARE = 0.018
_MIN_FONT = 12


def banner_lines(impression: str, model_label: str, *, is_test_model: bool) -> list[str]:
    """The banner's lines before wrapping: warning first, then the impression."""
    lines = []
    if is_test_model:
        lines.append(TEST_MODEL_BANNER)
    lines.append(f"NOT FOR DIAGNOSTIC USE - AI ({model_label}) - UNVERIFIED")
    if impression.strip():
        lines.append(f"Impression: {' '.join(impression.split())}")
    return lines


def render_burned_in(
    picture: Image.Image,
    boxes: Sequence[SourceBox],
    *,
    impression: str,
    model_label: str,
    is_test_model: bool,
) -> Image.Image:
    """``picture`` (source size, RGB) with boxes drawn and a banner band above it.

    The banner is a band of its own rather than an overlay, so no part of the
    radiograph (the apices sit at the top) is hidden behind text.
    """
    width, height = picture.size
    font_size = max(_MIN_FONT, round(width * _FONT_SHARE))
    font = ImageFont.load_default(size=font_size)
    chars_per_line = max(20, int(width / (font_size * 0.6)))
    lines = [
        wrapped
        for line in banner_lines(impression, model_label, is_test_model=is_test_model)
        for wrapped in textwrap.wrap(line, chars_per_line)
    ]
    line_height = round(font_size * 1.3)
    band = line_height * len(lines) + font_size
    canvas = Image.new("RGB", (width, height + band), _BANNER_BACKGROUND)
    canvas.paste(picture.convert("RGB"), (0, band))
    draw = ImageDraw.Draw(canvas)
    for number, line in enumerate(lines):
        colour = _TEST_TEXT if is_test_model and line == TEST_MODEL_BANNER else _BANNER_TEXT
        draw.text((font_size // 2, font_size // 2 + number * line_height), line, colour, font)
    stroke = max(2, width // 400)
    for box in boxes:
        rectangle = (box.left, box.top + band, box.right - 1, box.bottom - 1 + band)
        draw.rectangle(rectangle, outline=_BOX_COLOUR, width=stroke)
        # Label inside the box's top edge, so it never falls off the image.
        draw.text(
            (box.left + stroke + 2, box.top + band + stroke + 2), box.label, _BOX_COLOUR, font
        )
    return canvas


def build_burned_in_sc(
    source: Dataset,
    image: RadiographImage | Image.Image,
    boxes: Sequence[SourceBox],
    *,
    impression: str,
    author: ResultAuthor,
) -> Dataset:
    """Build the burned-in Secondary Capture of ``source``.

    Parameters
    ----------
    source:
        The source image's header: patient, study, Body Part Examined and
        orientation are copied.
    image:
        The model input from :func:`node.imaging.radiograph.radiograph_to_image`
        (the padding is cropped off here), or an RGB picture at source size.
    boxes:
        Rectangles in source pixels, drawn as they are.
    impression, author:
        Written in the banner (the impression, the model); a test model's banner
        says TEST MODEL first.

    Raises
    ------
    ValueError
        The picture's size is not the source's.
    """
    picture = image.source_picture() if isinstance(image, RadiographImage) else image.convert("RGB")
    expected = (int(source.Columns), int(source.Rows))
    if picture.size != expected:
        raise ValueError(
            f"picture is {picture.size[0]}×{picture.size[1]}, source {source.SOPInstanceUID} "
            f"is {expected[0]}×{expected[1]} (columns × rows)"
        )
    model_label, is_test_model = author.model_label, author.is_test_model
    rendered = render_burned_in(
        picture, boxes, impression=impression, model_label=model_label, is_test_model=is_test_model
    )
    orientation = source.get("PatientOrientation")
    sc = hd.sc.SCImage.from_ref_dataset(
        ref_dataset=source,
        pixel_array=np.asarray(rendered, dtype=np.uint8),
        photometric_interpretation=hd.PhotometricInterpretationValues.RGB,
        bits_allocated=8,
        coordinate_system=hd.CoordinateSystemNames.PATIENT,
        series_instance_uid=hd.UID(),
        series_number=SERIES_NUMBERS[Output.SC],
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer=author.manufacturer,
        patient_orientation=(
            (str(orientation[0]), str(orientation[1]))
            if orientation is not None and len(orientation) == 2
            else None
        ),
        # highdicom's default is Implicit VR, which cannot carry the SR-style
        # long texts nor survive some archives' transcoding untouched.
        transfer_syntax_uid=ExplicitVRLittleEndian,
    )
    sc.BurnedInAnnotation = "YES"
    follow_source(sc, source, author.series_description("burned-in"))
    sc.ImageComments = " / ".join(
        banner_lines(impression, model_label, is_test_model=is_test_model)
    )[:10240]
    logger.info("built burned-in SC %s with %d box(es)", sc.SOPInstanceUID, len(boxes))
    return sc


