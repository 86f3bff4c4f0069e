"""Per-frame attributes of single- and multi-frame images, one shape for both.

Enhanced CT/MR objects (and other multi-frame images) keep what a classic
slice has at the top level in *functional groups*: each frame's item of the
Per-Frame Functional Groups Sequence, falling back to the one item of the
Shared Functional Groups Sequence (PS3.3 C.7.6.16). The macros we need:

=====================================  =========================================
Plane Position (Patient)               ImagePositionPatient
Plane Orientation (Patient)            ImageOrientationPatient
Pixel Measures                         PixelSpacing
Pixel Value Transformation             RescaleSlope, RescaleIntercept
Frame Content                          FrameAcquisitionNumber, TemporalPositionIndex
CT / MR Image Frame Type               FrameType (ORIGINAL/DERIVED, LOCALIZER)
=====================================  =========================================

A single-frame image yields one :class:`FrameAttributes` read from the top
level, so the stack code treats a classic slice and a frame alike.
"""

from __future__ import annotations

from dataclasses import dataclass

from pydicom.dataset import Dataset

# The frame-type macros by SOP family; the first present wins.
_FRAME_TYPE_SEQUENCES = (
    "CTImageFrameTypeSequence",
    "MRImageFrameTypeSequence",
    "PETFrameTypeSequence",
    "XAXRFFrameCharacteristicsSequence",
)


@dataclass(frozen=True)
class FrameAttributes:
    """What the stack needs from one frame; ``None`` where the object doesn't say."""

    index: int | None  # 0-based frame number in a multi-frame object; None for single-frame
    image_position: tuple[float, float, float] | None
    image_orientation: tuple[float, float, float, float, float, float] | None
    pixel_spacing: tuple[float, float] | None  # (between rows, between columns) in mm
    rescale_slope: float | None
    rescale_intercept: float | None
    image_type: tuple[str, ...]  # FrameType for frames, ImageType for slices; upper case
    acquisition_number: str  # "" when absent
    temporal_position: str  # "" when absent


def is_multiframe(header: Dataset) -> bool:
    """True for objects whose frames must be read through functional groups."""
    frames = _int_or_none(header.get("NumberOfFrames"))
    return (frames is not None and frames > 1) or "PerFrameFunctionalGroupsSequence" in header


def number_of_frames(header: Dataset) -> int:
    frames = _int_or_none(header.get("NumberOfFrames"))
    return frames if frames is not None and frames > 0 else 1


def frame_attributes(header: Dataset) -> list[FrameAttributes]:
    """One entry per frame, in stored frame order.

    Top-level values are the fallback for every macro, which is what legacy
    multi-frame objects (NumberOfFrames > 1 without functional groups) carry.
    """
    top_level = _attributes(None, header, None)
    if not is_multiframe(header):
        return [top_level]
    shared = _first_item(header, "SharedFunctionalGroupsSequence")
    per_frame = header.get("PerFrameFunctionalGroupsSequence") or []
    out = []
    for index in range(number_of_frames(header)):
        item = per_frame[index] if index < len(per_frame) else None
        out.append(_frame(index, item, shared, header, top_level))
    return out


def _frame(
    index: int,
    item: Dataset | None,
    shared: Dataset | None,
    header: Dataset,
    top_level: FrameAttributes,
) -> FrameAttributes:
    def macro(keyword: str) -> Dataset | None:
        for groups in (item, shared):
            if groups is not None:
                found = _first_item(groups, keyword)
                if found is not None:
                    return found
        return None

    position = macro("PlanePositionSequence")
    orientation = macro("PlaneOrientationSequence")
    measures = macro("PixelMeasuresSequence")
    transformation = macro("PixelValueTransformationSequence")
    content = macro("FrameContentSequence")
    frame_type: tuple[str, ...] = ()
    for keyword in _FRAME_TYPE_SEQUENCES:
        found = macro(keyword)
        if found is not None and found.get("FrameType"):
            frame_type = _upper_tuple(found.FrameType)
            break
    own = _attributes(index, position or Dataset(), orientation)
    rescale = transformation if transformation is not None else Dataset()
    acquisition = str(content.get("FrameAcquisitionNumber", "")) if content is not None else ""
    temporal = str(content.get("TemporalPositionIndex", "")) if content is not None else ""
    slope = _float_or_none(rescale.get("RescaleSlope"))
    intercept = _float_or_none(rescale.get("RescaleIntercept"))
    return FrameAttributes(
        index=index,
        image_position=own.image_position or top_level.image_position,
        image_orientation=own.image_orientation or top_level.image_orientation,
        pixel_spacing=(_pair(measures.get("PixelSpacing")) if measures is not None else None)
        or top_level.pixel_spacing,
        rescale_slope=slope if slope is not None else top_level.rescale_slope,
        rescale_intercept=intercept if intercept is not None else top_level.rescale_intercept,
        image_type=frame_type or top_level.image_type,
        acquisition_number=acquisition or top_level.acquisition_number,
        temporal_position=temporal,
    )


def _attributes(
    index: int | None, ds: Dataset, orientation_item: Dataset | None
) -> FrameAttributes:
    """Attributes read from one dataset level (the top level, or a frame's macros)."""
    iop_source = orientation_item if orientation_item is not None else ds
    return FrameAttributes(
        index=index,
        image_position=_triple(ds.get("ImagePositionPatient")),
        image_orientation=_sextuple(iop_source.get("ImageOrientationPatient")),
        pixel_spacing=_pair(ds.get("PixelSpacing")),
        rescale_slope=_float_or_none(ds.get("RescaleSlope")),
        rescale_intercept=_float_or_none(ds.get("RescaleIntercept")),
        image_type=_upper_tuple(ds.get("ImageType") or ()),
        acquisition_number=str(ds.get("AcquisitionNumber", "") or ""),
        temporal_position="",
    )


def _first_item(ds: Dataset, keyword: str) -> Dataset | None:
    sequence = ds.get(keyword)
    if sequence is None or len(sequence) == 0:
        return None
    item = sequence[0]
    return item if isinstance(item, Dataset) else None


def _floats(value: object, n: int) -> tuple[float, ...] | None:
    if value is None:
        return None
    try:
        values = tuple(float(v) for v in value)  # type: ignore[attr-defined]
    except (TypeError, ValueError):
        return None
    return values if len(values) == n else None


def _triple(value: object) -> tuple[float, float, float] | None:
    got = _floats(value, 3)
    return (got[0], got[1], got[2]) if got else None


def _sextuple(value: object) -> tuple[float, float, float, float, float, float] | None:
    got = _floats(value, 6)
    return (got[0], got[1], got[2], got[3], got[4], got[5]) if got else None


def _pair(value: object) -> tuple[float, float] | None:
    got = _floats(value, 2)
    return (got[0], got[1]) if got and got[0] > 0 and got[1] > 0 else None


def _float_or_none(value: object) -> float | None:
    if value is None or str(value).strip() == "":
        return None
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None


def _int_or_none(value: object) -> int | None:
    number = _float_or_none(value)
    return int(number) if number is not None else None


def _upper_tuple(values: object) -> tuple[str, ...]:
    if isinstance(values, str):
        return (values.upper(),)
    try:
        return tuple(str(v).upper() for v in values)  # type: ignore[attr-defined]
    except TypeError:
        return ()
