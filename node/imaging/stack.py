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

Nothing here touches pixel data (that is :mod:`node.imaging.pixels`); the data
model lives in :mod:`node.imaging.stack_types`.
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
from node.imaging.stack_types import (
    AXIS_PLANES,
    DropLog,
    DropReason,
    Frame,
    Gap,
    Plane,
    Stack,
)

logger = logging.getLogger(__name__)

SUPPORTED_MODALITIES = frozenset({"CT", "MR"})
SUPPORTED_PHOTOMETRIC = frozenset({"MONOCHROME1", "MONOCHROME2"})

# Orientation cosines of one acquisition differ by float noise (~1e-6); a
# genuinely different plane differs by ≫ 0.01. 1e-3 separates the two.
ORIENTATION_TOLERANCE = 1e-3
# Two slices closer than this along the normal are the same position (mm).
DUPLICATE_TOLERANCE_MM = 0.01
# Spacing deviating from the median by more than max(abs, rel × median) is irregular.
SPACING_ABS_TOLERANCE_MM = 0.01
SPACING_REL_TOLERANCE = 0.01
# A step this many times the median spacing is reported as a gap (missing slices).
GAP_FACTOR = 1.5
# A slice normal within this angle of a patient axis names that plane; else "oblique".
PLANE_TOLERANCE_DEG = 5.0
# The stacking direction deviating from the normal by more than this is a shear
# (gantry tilt): slices are not on top of each other.
SHEAR_TOLERANCE_DEG = 0.5
# Numbers that rise along the stack in at least this share of neighbouring pairs set
# the direction (one re-sent or renumbered slice doesn't flip a series); below it the
# numbering says nothing and the stack goes in ascending position.
NUMBERING_AGREEMENT = 0.9
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

    stack = _largest_consistent_group(frames, log, series_uid)
    series_uid = stack[0].key[0] or series_uid
    modality = stack[0].key[1]
    _check_modality(modality, series_uid, modalities)
    stack = _one_acquisition(stack, log)
    stack.sort(key=lambda f: (f.position, f.label))
    stack = _drop_duplicate_positions(stack, log)
    measured = _measure(stack, series_uid, modality, log)
    measured.descending, measured.order_source = _numbering_direction(stack, log)
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
            frame = _frame(source, header, attributes, label, key)
            if frame is not None:
                frames.append(frame)
                continue
            no_geometry.append(label)
            if multiframe:
                placed.append(_frame_without_geometry(source, header, attributes, label, key))
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


def _frame(
    source: Dataset | Path,
    header: Dataset,
    attributes: FrameAttributes,
    label: str,
    key: tuple[str, str, int, int],
) -> Frame | None:
    if attributes.image_orientation is None or attributes.image_position is None:
        return None
    orientation = np.asarray(attributes.image_orientation, dtype=float)
    normal = np.cross(orientation[:3], orientation[3:])
    length = float(np.linalg.norm(normal))
    if not math.isfinite(length) or length < 0.5:  # degenerate or non-orthogonal cosines
        return None
    normal /= length
    ipp = np.asarray(attributes.image_position, dtype=float)
    return Frame(
        source=source,
        header=header,
        attributes=attributes,
        label=label,
        key=key,
        orientation=orientation,
        normal=normal,
        ipp=ipp,
        position=float(np.dot(ipp, normal)),
    )


def _frame_without_geometry(
    source: Dataset | Path,
    header: Dataset,
    attributes: FrameAttributes,
    label: str,
    key: tuple[str, str, int, int],
) -> Frame:
    """A frame of a multi-frame object placed by its frame number alone."""
    index = attributes.index or 0
    return Frame(
        source=source,
        header=header,
        attributes=attributes,
        label=label,
        key=key,
        orientation=np.array([1.0, 0.0, 0.0, 0.0, 1.0, 0.0]),
        normal=np.array([0.0, 0.0, 1.0]),
        ipp=np.array([0.0, 0.0, float(index)]),
        position=float(index),
    )


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
    return Stack(
        frames=frames,
        series_uid=series_uid,
        modality=modality,
        plane=Plane.UNKNOWN,
        orientation=frames[0].orientation,
        normal=frames[0].normal,
        pixel_spacing=frames[0].attributes.pixel_spacing,
        step_mm=None,
        step_vector=None,
        obliquity_deg=0.0,
        shear_deg=0.0,
        gaps=[],
        irregular=False,
        dropped=log.dropped,
        notes=log.notes,
        geometry_known=False,
    )


def _check_modality(modality: str, series_uid: str, modalities: frozenset[str]) -> None:
    if modality not in modalities:
        raise ImagingError(
            f"series {series_uid}: modality {modality or '<none>'!r} is not a volume "
            f"modality (supported: {', '.join(sorted(modalities))})"
        )


# --- selecting -----------------------------------------------------------------


def _largest_consistent_group(frames: list[Frame], log: DropLog, series_uid: str) -> list[Frame]:
    """Group by (series, modality, matrix, orientation) and keep the largest group."""
    groups: list[tuple[tuple[str, str, int, int], np.ndarray, list[Frame]]] = []
    for frame in frames:
        for group_key, group_orientation, members in groups:
            if group_key == frame.key and _same_orientation(group_orientation, frame.orientation):
                members.append(frame)
                break
        else:
            groups.append((frame.key, frame.orientation, [frame]))
    if not groups:
        counts = ", ".join(f"{k}: {v}" for k, v in sorted(log.dropped.items())) or "none given"
        raise ImagingError(
            f"series {series_uid}: no usable slice (need greyscale pixel data and geometry; "
            f"dropped {counts})"
        )
    # Largest group wins; ties go to the first seen, which keeps the choice stable.
    best = max(range(len(groups)), key=lambda i: len(groups[i][2]))
    best_key, best_orientation, stack = groups[best]
    for i, (key, orientation, members) in enumerate(groups):
        if i == best:
            continue
        reasons: list[str] = []
        if key[0] != best_key[0]:
            reasons.append(f"series {key[0]}")
        if key[1] != best_key[1]:
            reasons.append(f"modality {key[1] or '<none>'}")
        if key[2:] != best_key[2:]:
            reasons.append(f"matrix {key[2]}x{key[3]} vs {best_key[2]}x{best_key[3]}")
        if not _same_orientation(orientation, best_orientation):
            reasons.append(
                f"orientation {_fmt_vector(orientation)} vs {_fmt_vector(best_orientation)}"
            )
        log.drop(
            DropReason.OTHER_STACK,
            [m.label for m in members],
            f"slice(s) outside the main stack ({'; '.join(reasons)})",
        )
    return list(stack)


def _same_orientation(a: np.ndarray, b: np.ndarray) -> bool:
    return bool(np.max(np.abs(a - b)) <= ORIENTATION_TOLERANCE)


def _one_acquisition(stack: list[Frame], log: DropLog) -> list[Frame]:
    """Keep one of several acquisitions that cover the same positions.

    Acquisitions are tried largest first (ORIGINAL, then the lower number, on a
    tie); one is dropped when it overlaps an accepted one by more than a slice
    step *and* the two together would not form a regular stack (an interleaved
    concatenation does; a repeat scan doesn't).
    """
    by_acquisition: dict[tuple[str, str], list[Frame]] = {}
    for frame in stack:
        acquisition = (frame.attributes.acquisition_number, frame.attributes.temporal_position)
        by_acquisition.setdefault(acquisition, []).append(frame)
    if len(by_acquisition) < 2:
        return stack

    def preference(item: tuple[tuple[str, str], list[Frame]]) -> tuple[int, int, str, str]:
        (number, temporal), members = item
        originals = sum(f.original for f in members)
        return -len(members), -originals, number.zfill(12), temporal.zfill(12)

    ordered = sorted(by_acquisition.items(), key=preference)
    accepted: list[Frame] = []
    accepted_positions = np.array([], dtype=float)
    for (number, temporal), members in ordered:
        positions = np.sort([f.position for f in members])
        overlap = _conflicting_overlap(accepted_positions, positions)
        if overlap is None:
            accepted.extend(members)
            accepted_positions = np.sort(np.concatenate([accepted_positions, positions]))
            continue
        name = f"acquisition {number or '<none>'}" + (
            f" (temporal position {temporal})" if temporal else ""
        )
        log.drop(
            DropReason.OTHER_ACQUISITION,
            [f.label for f in members],
            f"slice(s) of {name}, which overlaps the kept acquisition at "
            f"z={overlap[0]:.2f}…{overlap[1]:.2f} mm",
        )
    return accepted


def _conflicting_overlap(kept: np.ndarray, candidate: np.ndarray) -> tuple[float, float] | None:
    """The overlapping z range when ``candidate`` can't join ``kept``; None if it can."""
    if kept.size == 0 or candidate.size == 0:
        return None
    low = max(float(kept[0]), float(candidate[0]))
    high = min(float(kept[-1]), float(candidate[-1]))
    own_steps = [float(np.median(np.diff(p))) for p in (kept, candidate) if p.size > 1]
    if high - low <= max([DUPLICATE_TOLERANCE_MM, *own_steps]):
        return None  # side by side (or one shared boundary position)
    window = np.concatenate([kept, candidate])
    window = np.sort(window[(window >= low - 1e-6) & (window <= high + 1e-6)])
    steps = np.diff(window)
    if steps.size and float(steps.min()) > DUPLICATE_TOLERANCE_MM:
        median = float(np.median(steps))
        tolerance = max(SPACING_ABS_TOLERANCE_MM, SPACING_REL_TOLERANCE * median)
        if float(np.max(np.abs(steps - median))) <= tolerance:
            return None  # interleaved into one regular stack
    return low, high


def _drop_duplicate_positions(stack: list[Frame], log: DropLog) -> list[Frame]:
    """One frame per position (stack must be sorted); ORIGINAL beats DERIVED.

    Among equals the lower InstanceNumber, then frame number, then label wins,
    so the choice doesn't depend on file order.
    """
    kept: list[Frame] = []
    dropped: list[str] = []
    run: list[Frame] = []
    for item in [*stack, None]:
        if run and (item is None or item.position - run[0].position > DUPLICATE_TOLERANCE_MM):
            run.sort(key=_duplicate_preference)
            kept.append(run[0])
            dropped.extend(f"{d.label} (z={d.position:.2f})" for d in run[1:])
            run = []
        if item is not None:
            run.append(item)
    log.drop(
        DropReason.DUPLICATE_POSITION,
        dropped,
        "duplicate-position slice(s), ORIGINAL preferred",
    )
    return kept


def _duplicate_preference(item: Frame) -> tuple[int, int, int, str]:
    number = _instance_number(item)
    return (
        0 if item.original else 1,
        1 << 30 if number is None else number,
        item.frame_index or 0,
        item.label,
    )


# --- direction ---------------------------------------------------------------------


def _numbering_direction(stack: list[Frame], log: DropLog) -> tuple[bool, str]:
    """(descending, what decided it) for a stack sorted ascending along its normal.

    The key is (InstanceNumber, frame number): the frames of one enhanced object go in
    their stored order. Frames without an InstanceNumber are left out of the count.
    """
    keys = [
        (number, f.frame_index or 0) for f in stack if (number := _instance_number(f)) is not None
    ]
    if len(stack) < 2:
        return False, "InstanceNumber"
    if len(keys) < 2:
        log.notes.append("no InstanceNumbers: slices sent in ascending position along the normal")
        return False, "default: no InstanceNumbers"
    rising = sum(b > a for a, b in zip(keys, keys[1:], strict=False))
    falling = sum(b < a for a, b in zip(keys, keys[1:], strict=False))
    if rising + falling == 0:
        log.notes.append(
            "InstanceNumbers all equal: slices sent in ascending position along the normal"
        )
        return False, "default: InstanceNumbers all equal"
    if max(rising, falling) < NUMBERING_AGREEMENT * (rising + falling):
        log.notes.append(
            f"InstanceNumbers don't follow the slice positions ({rising} pairs rise, {falling} "
            "fall along the normal): slices sent in ascending position along the normal"
        )
        return False, "default: InstanceNumbers inconsistent"
    descending = falling > rising
    if min(rising, falling):
        log.notes.append(
            f"InstanceNumbers mostly {'fall' if descending else 'rise'} along the normal "
            f"({max(rising, falling)} of {rising + falling} pairs): slices sent in "
            "InstanceNumber order"
        )
    return descending, "InstanceNumber"


def _instance_number(frame: Frame) -> int | None:
    value = frame.header.get("InstanceNumber")
    if value is None or str(value).strip() == "":
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


# --- measuring ---------------------------------------------------------------------


def _measure(stack: list[Frame], series_uid: str, modality: str, log: DropLog) -> Stack:
    first = stack[0]
    normal = first.normal
    axis = int(np.argmax(np.abs(normal)))
    obliquity = math.degrees(math.acos(min(1.0, abs(float(normal[axis])))))
    plane = AXIS_PLANES[axis] if obliquity <= PLANE_TOLERANCE_DEG else Plane.OBLIQUE

    step_mm: float | None = None
    step_vector: np.ndarray | None = None
    shear = 0.0
    gaps: list[Gap] = []
    irregular = False
    if len(stack) >= 2:
        positions = np.array([f.position for f in stack])
        steps = np.diff(positions)
        step_mm = float(np.median(steps))
        step_vector = (stack[-1].ipp - first.ipp) / (len(stack) - 1)
        length = float(np.linalg.norm(step_vector))
        if length > 0:
            cosine = min(1.0, abs(float(np.dot(step_vector, normal))) / length)
            shear = math.degrees(math.acos(cosine))
        gaps, irregular = _spacing(positions, steps, step_mm, log)

    tilt_value = first.header.get("GantryDetectorTilt")
    tilt = float(tilt_value) if tilt_value not in (None, "") else None
    if shear > SHEAR_TOLERANCE_DEG:
        told = f"; GantryDetectorTilt {tilt:g}°" if tilt is not None else ""
        log.notes.append(
            f"sheared stack: slices advance {shear:.1f}° off their normal (tilted gantry{told}); "
            "each slice is sent where the scanner put it"
        )
    return Stack(
        frames=stack,
        series_uid=series_uid,
        modality=modality,
        plane=plane,
        orientation=first.orientation,
        normal=normal,
        pixel_spacing=first.attributes.pixel_spacing,
        step_mm=step_mm,
        step_vector=step_vector,
        obliquity_deg=obliquity,
        shear_deg=shear,
        gaps=gaps,
        irregular=irregular,
        dropped=log.dropped,
        notes=log.notes,
        gantry_tilt_deg=tilt,
    )


def _spacing(
    positions: np.ndarray, steps: np.ndarray, median: float, log: DropLog
) -> tuple[list[Gap], bool]:
    """Gaps and irregular spacing, noted with the values; the slices are kept."""
    if len(positions) < 3:
        return [], False
    tolerance = max(SPACING_ABS_TOLERANCE_MM, SPACING_REL_TOLERANCE * median)
    gaps = [
        Gap(int(i), float(positions[i]), float(positions[i + 1]), float(steps[i]), median)
        for i in np.flatnonzero(steps > GAP_FACTOR * median)
    ]
    irregular = float(np.max(np.abs(steps - median))) > tolerance
    if gaps:
        shown = ", ".join(
            f"{g.step_mm:.2f} mm between z={g.position_mm:.2f} and z={g.next_position_mm:.2f} "
            f"(after slice {g.after_index})"
            for g in gaps[:3]
        )
        more = f" (+{len(gaps) - 3} more)" if len(gaps) > 3 else ""
        log.notes.append(
            f"{len(gaps)} gap(s) in the stack (expected spacing {median:.2f} mm): {shown}{more}"
        )
    elif irregular:
        worst = int(np.argmax(np.abs(steps - median)))
        log.notes.append(
            f"irregular slice spacing: {float(steps.min()):.3f}–{float(steps.max()):.3f} mm "
            f"(median {median:.3f} mm; largest deviation {float(steps[worst]):.3f} mm after "
            f"slice {worst}, z={float(positions[worst]):.2f})"
        )
    return gaps, irregular


# --- small helpers -------------------------------------------------------------------


def _label(source: Dataset | Path, header: Dataset) -> str:
    uid = header.get("SOPInstanceUID")
    if uid:
        return str(uid)
    return source.name if isinstance(source, Path) else "<no SOPInstanceUID>"


def _fmt_vector(values: np.ndarray) -> str:
    return "[" + ", ".join(f"{v:.3f}" for v in values) + "]"
