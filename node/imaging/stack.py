"""CT/MR instances → one stack of frames sorted along the slice normal.

Slices and the frames of enhanced multi-frame objects are treated alike: each
becomes a :class:`Frame` with its own position, orientation, spacing and
rescale (read through the functional groups for multi-frame objects, see
:mod:`node.imaging.multiframe`). :func:`assemble_stack` then

1. drops what can't be part of the stack — unreadable files, instances without
   pixel data or with a colour/palette PhotometricInterpretation, localizers,
   frames without geometry — each reason counted and noted;
2. keeps the largest group sharing series, modality, matrix and orientation;
3. within it, keeps one of several *overlapping* acquisitions (AcquisitionNumber /
   FrameAcquisitionNumber and TemporalPositionIndex): the largest, ORIGINAL on a
   tie. Acquisitions that sit side by side, or interleave into a regular stack,
   stay together;
4. sorts on ``IPP · (row × col)``, removes duplicate positions (ORIGINAL
   preferred), and measures spacing, gaps, plane, obliquity and shear (gantry
   tilt), with the values in the notes and in :meth:`Stack.geometry`;
5. picks the direction the slices are sent in: the one in which the InstanceNumbers
   increase. The notebook sends slices in InstanceNumber order; sorting on geometry
   survives shuffled or missing numbers, and running it in the numbers' direction
   gives a normally numbered series the notebook's order (a CT numbered head to foot
   goes head first). Without usable numbers the stack goes in ascending position, noted.

This module reads and filters (step 1) and runs the steps in order; selecting
(steps 2–4) is :mod:`node.imaging.stack_select`, measuring and the direction (4–5)
:mod:`node.imaging.stack_geometry`. Nothing here touches pixel data (that is
:mod:`node.imaging.pixels`); the data model lives in :mod:`node.imaging.stack_types`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset

from node.imaging.dicom_io import read_dataset
from node.imaging.errors import ImagingError
from node.imaging.multiframe import FrameAttributes, frame_attributes, is_multiframe
from node.imaging.stack_geometry import measure, numbering_direction
from node.imaging.stack_select import (
    drop_duplicate_positions,
    largest_consistent_group,
    one_acquisition,
)
from node.imaging.stack_types import DropLog, DropReason, Frame, Stack

__all__ = ["SUPPORTED_MODALITIES", "assemble_stack"]

logger = logging.getLogger(__name__)

SUPPORTED_MODALITIES = frozenset({"CT", "MR"})
SUPPORTED_PHOTOMETRIC = frozenset({"MONOCHROME1", "MONOCHROME2"})

# Header-only reads: elements larger than this stay on disk (pixel data above all).
_DEFER_SIZE = 1024
_PIXEL_DATA_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")


def assemble_stack(
    sources: Sequence[Dataset] | Sequence[Path] | Sequence[str],
    *,
    modalities: frozenset[str] = SUPPORTED_MODALITIES,
) -> Stack:
    """Read headers, select and sort one stack; see the module docstring.

    Raises
    ------
    ImagingError
        Nothing readable, no usable slice, or a modality outside ``modalities``;
        the message names the SeriesInstanceUID and the reasons.
    """
    log = DropLog()
    headers = _read_headers(sources, log)
    series_uid = _majority_series_uid(headers)
    if not headers:
        raise ImagingError(f"series {series_uid}: no readable DICOM instance")
    headers = _drop_without_pixels(headers, log)
    headers = _drop_unsupported_photometric(headers, log)
    frames, fallback = _frames(headers, log)
    if not frames and fallback:
        return _stored_order_stack(fallback, log, modalities)

    stack = largest_consistent_group(frames, log, series_uid)
    series_uid = stack[0].key[0] or series_uid
    modality = stack[0].key[1]
    _check_modality(modality, series_uid, modalities)
    stack = one_acquisition(stack, log)
    stack.sort(key=lambda f: (f.position, f.label))
    stack = drop_duplicate_positions(stack, log)
    measured = measure(stack, series_uid, modality, log)
    measured.descending, measured.order_source = numbering_direction(stack, log)
    return measured


# --- reading -----------------------------------------------------------------


def _read_headers(
    sources: Sequence[Dataset] | Sequence[Path] | Sequence[str], log: DropLog
) -> list[tuple[Dataset | Path, Dataset]]:
    """(source, header) for every readable instance; unreadable files become a note."""
    out: list[tuple[Dataset | Path, Dataset]] = []
    unreadable: list[str] = []
    for item in sources:
        if isinstance(item, Dataset):
            out.append((item, item))
            continue
        path = Path(item)
        try:
            # defer_size keeps pixel data on disk: the header read is ~0.3 ms and
            # the element still exists, so "has pixel data" can be checked.
            header = read_dataset(path, defer_size=_DEFER_SIZE)
        except ImagingError as exc:
            unreadable.append(path.name)
            logger.warning("skipping %s: not readable as DICOM (%s)", path.name, exc.__cause__)
            continue
        out.append((path, header))
    log.drop(DropReason.UNREADABLE, unreadable, "unreadable file(s)")
    return out


def _majority_series_uid(headers: list[tuple[Dataset | Path, Dataset]]) -> str:
    """The series to name in errors raised before a stack is chosen."""
    counts: dict[str, int] = {}
    for _, header in headers:
        uid = str(header.get("SeriesInstanceUID", ""))
        counts[uid] = counts.get(uid, 0) + 1
    if not counts:
        return "<unknown series>"
    return max(counts, key=lambda uid: counts[uid]) or "<no SeriesInstanceUID>"


def _drop_without_pixels(
    headers: list[tuple[Dataset | Path, Dataset]], log: DropLog
) -> list[tuple[Dataset | Path, Dataset]]:
    kept, dropped = [], []
    for source, header in headers:
        if any(keyword in header for keyword in _PIXEL_DATA_KEYWORDS):
            kept.append((source, header))
        else:
            dropped.append(_label(source, header))
    log.drop(DropReason.NO_PIXEL_DATA, dropped, "instance(s) without pixel data")
    return kept


def _drop_unsupported_photometric(
    headers: list[tuple[Dataset | Path, Dataset]], log: DropLog
) -> list[tuple[Dataset | Path, Dataset]]:
    """CT/MR volumes are greyscale; colour or palette images can't be windowed as HU."""
    kept, dropped, kinds = [], [], set()
    for source, header in headers:
        photometric = str(header.get("PhotometricInterpretation", "")).strip().upper()
        samples = int(header.get("SamplesPerPixel", 1) or 1)
        if photometric in SUPPORTED_PHOTOMETRIC and samples == 1:
            kept.append((source, header))
        else:
            dropped.append(_label(source, header))
            kinds.add(photometric or "<none>")
    if dropped:
        log.drop(
            DropReason.UNSUPPORTED_PHOTOMETRIC,
            dropped,
            f"instance(s) with unsupported PhotometricInterpretation {', '.join(sorted(kinds))} "
            f"(need {' or '.join(sorted(SUPPORTED_PHOTOMETRIC))})",
        )
    return kept


def _frames(
    headers: list[tuple[Dataset | Path, Dataset]], log: DropLog
) -> tuple[list[Frame], list[Frame]]:
    """Every frame with usable geometry, and (fallback) the frames of a lone
    multi-frame object that has none."""
    frames: list[Frame] = []
    localizers: list[str] = []
    no_geometry: list[str] = []
    placed: list[Frame] = []  # frames of multi-frame objects placed by frame number
    for source, header in headers:
        multiframe = is_multiframe(header)
        base_label = _label(source, header)
        key = (
            str(header.get("SeriesInstanceUID", "")),
            str(header.get("Modality", "")).upper(),
            int(header.get("Rows", 0) or 0),
            int(header.get("Columns", 0) or 0),
        )
        for attributes in frame_attributes(header):
            label = (
                f"{base_label} frame {attributes.index + 1}"
                if multiframe and attributes.index is not None
                else base_label
            )
            if "LOCALIZER" in attributes.image_type:
                localizers.append(label)
                continue
            geometry = _geometry(attributes)
            if geometry is not None:
                frames.append(_frame(source, header, attributes, label, key, geometry))
                continue
            no_geometry.append(label)
            if multiframe:
                by_number = _by_frame_number(attributes)
                placed.append(_frame(source, header, attributes, label, key, by_number))
    log.drop(DropReason.LOCALIZER, localizers, "localizer(s)")

    lone_multiframe = (
        not frames
        and placed
        and len(placed) == len(no_geometry)
        and len({id(f.header) for f in placed}) == 1
    )
    if lone_multiframe:
        return [], placed
    log.drop(
        DropReason.NO_GEOMETRY,
        no_geometry,
        "slice(s) without a usable ImagePositionPatient/ImageOrientationPatient",
    )
    return frames, []


_Geometry = tuple[np.ndarray, np.ndarray, np.ndarray]  # orientation, unit normal, IPP


def _geometry(attributes: FrameAttributes) -> _Geometry | None:
    """The frame's own orientation, normal and position; None when missing or degenerate."""
    if attributes.image_orientation is None or attributes.image_position is None:
        return None
    orientation = np.asarray(attributes.image_orientation, dtype=float)
    normal = np.cross(orientation[:3], orientation[3:])
    length = float(np.linalg.norm(normal))
    if not math.isfinite(length) or length < 0.5:  # degenerate or non-orthogonal cosines
        return None
    normal /= length
    return orientation, normal, np.asarray(attributes.image_position, dtype=float)


def _by_frame_number(attributes: FrameAttributes) -> _Geometry:
    """A frame of a multi-frame object without geometry, placed by its frame number alone."""
    index = attributes.index or 0
    return (
        np.array([1.0, 0.0, 0.0, 0.0, 1.0, 0.0]),
        np.array([0.0, 0.0, 1.0]),
        np.array([0.0, 0.0, float(index)]),
    )


def _frame(
    source: Dataset | Path,
    header: Dataset,
    attributes: FrameAttributes,
    label: str,
    key: tuple[str, str, int, int],
    geometry: _Geometry,
) -> Frame:
    orientation, normal, ipp = geometry
    position = float(np.dot(ipp, normal))
    # Every argument is named as the field it fills, in the fields' order.
    return Frame(source, header, attributes, label, key, orientation, normal, ipp, position)


def _stored_order_stack(frames: list[Frame], log: DropLog, modalities: frozenset[str]) -> Stack:
    series_uid = frames[0].key[0] or "<no SeriesInstanceUID>"
    modality = frames[0].key[1]
    _check_modality(modality, series_uid, modalities)
    log.notes.append(
        f"multi-frame {frames[0].label.split(' frame ')[0]} has no per-frame geometry "
        f"(PlanePositionSequence/PlaneOrientationSequence): {len(frames)} frame(s) kept in "
        "stored order; plane and spacing unknown"
    )
    frames = sorted(frames, key=lambda f: f.frame_index or 0)
    return measure(frames, series_uid, modality, log, placed=False)


def _check_modality(modality: str, series_uid: str, modalities: frozenset[str]) -> None:
    if modality not in modalities:
        raise ImagingError(
            f"series {series_uid}: modality {modality or '<none>'!r} is not a volume "
            f"modality (supported: {', '.join(sorted(modalities))})"
        )


# --- small helpers -------------------------------------------------------------------


def _label(source: Dataset | Path, header: Dataset) -> str:
    uid = header.get("SOPInstanceUID")
    if uid:
        return str(uid)
    return source.name if isinstance(source, Path) else "<no SOPInstanceUID>"
