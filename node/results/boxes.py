"""Model boxes → rectangles in the source image's pixels.

MedGemma answers ``box_2d`` as [y0, x0, y1, x1] normalised to 0-1000 on the image
it saw: the source zero-padded to a square (``node.imaging.radiograph``). The
SR, the GSPS and the burned-in capture all draw on the *source* image, so each
box is scaled to the square's side, shifted by the padding and clipped to the
source. Boxes that end up with no area are dropped, each with a reason for the
job record, never silently.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from node.imaging.radiograph import RadiographImage
from node.inference.answers import BOX_SCALE, Box
from node.results.content import derived_uid

__all__ = ["SourceBox", "box_tracking_uid", "map_box", "map_boxes"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SourceBox:
    """A labelled rectangle in source pixel coordinates.

    Coordinates follow DICOM's pixel convention for graphic data: (0, 0) is the
    top-left corner of the top-left pixel, so the whole image spans
    ``0..Columns`` × ``0..Rows``.
    """

    label: str
    top: float
    left: float
    bottom: float
    right: float

    @property
    def width(self) -> float:
        return self.right - self.left

    @property
    def height(self) -> float:
        return self.bottom - self.top

    def corners(self) -> np.ndarray:
        """The rectangle as a closed polyline: 5 (column, row) points, first = last.

        Both SR SCOORD and GSPS graphic data are (column, row) pairs.
        """
        return np.array(
            [
                [self.left, self.top],
                [self.right, self.top],
                [self.right, self.bottom],
                [self.left, self.bottom],
                [self.left, self.top],
            ],
            dtype=np.float64,
        )


def map_box(box: Box, image: RadiographImage) -> SourceBox | str:
    """Map one model box to source pixels; a reason string when it must be dropped."""
    label = box.label.strip() or "(unlabelled)"
    if box.y1 == box.y0 or box.x1 == box.x0:
        return f"box {label!r} dropped: empty (zero height or width) {_coords(box)}"
    if box.y1 < box.y0 or box.x1 < box.x0:
        return f"box {label!r} dropped: inverted (y1 < y0 or x1 < x0) {_coords(box)}"
    side = max(image.source_rows, image.source_columns)
    scale = side / BOX_SCALE
    top = box.y0 * scale - image.padding.top
    bottom = box.y1 * scale - image.padding.top
    left = box.x0 * scale - image.padding.left
    right = box.x1 * scale - image.padding.left
    clipped = SourceBox(
        label=label,
        top=min(max(top, 0.0), float(image.source_rows)),
        left=min(max(left, 0.0), float(image.source_columns)),
        bottom=min(max(bottom, 0.0), float(image.source_rows)),
        right=min(max(right, 0.0), float(image.source_columns)),
    )
    if clipped.height <= 0 or clipped.width <= 0:
        return (
            f"box {label!r} dropped: entirely outside the source image "
            f"(in the square padding) {_coords(box)}"
        )
    return clipped


def map_boxes(boxes: Sequence[Box], image: RadiographImage) -> tuple[list[SourceBox], list[str]]:
    """Map model boxes to source pixels.

    Returns the kept boxes (clipped to the source) in the given order, and one
    reason per dropped box naming its label and why.
    """
    kept: list[SourceBox] = []
    dropped: list[str] = []
    for box in boxes:
        mapped = map_box(box, image)
        if isinstance(mapped, str):
            logger.info("%s", mapped)
            dropped.append(mapped)
        else:
            kept.append(mapped)
    return kept, dropped


def box_tracking_uid(source_sop_instance_uid: str, box: SourceBox) -> str:
    """Tracking UID of the finding ``box`` marks on one source image.

    Derived from the image and the box itself (not its position in a list), so
    the SR's measurement group and the GSPS's graphic object for the same box
    carry the same UID without sharing state.
    """
    return derived_uid(
        "finding-box",
        source_sop_instance_uid,
        box.label,
        *(f"{v:.2f}" for v in (box.top, box.left, box.bottom, box.right)),
    )


def _coords(box: Box) -> str:
    return f"[y0={box.y0:g}, x0={box.x0:g}, y1={box.y1:g}, x1={box.x1:g}]"
