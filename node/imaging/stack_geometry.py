"""A sorted stack measured: plane, spacing, gaps, obliquity, shear, and the direction it is sent in.

Steps 4–5 of :func:`node.imaging.stack.assemble_stack`. Nothing is dropped here:
irregular spacing, gaps and shear are noted with their values and the slices kept.
"""

from __future__ import annotations

import math

import numpy as np

from node.imaging.stack_types import AXIS_PLANES, DropLog, Frame, Gap, Plane, Stack

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


def measure(
    stack: list[Frame], series_uid: str, modality: str, log: DropLog, *, placed: bool = True
) -> Stack:
    """The :class:`Stack` of sorted ``stack``, measured.

    ``placed=False``: the frames have no geometry of their own (a multi-frame object
    without per-frame positions, kept in stored order), so nothing is measured.
    """
    first = stack[0]
    normal = first.normal
    plane, obliquity = Plane.UNKNOWN, 0.0
    if placed:
        axis = int(np.argmax(np.abs(normal)))
        obliquity = math.degrees(math.acos(min(1.0, abs(float(normal[axis])))))
        plane = AXIS_PLANES[axis] if obliquity <= PLANE_TOLERANCE_DEG else Plane.OBLIQUE

    step_mm: float | None = None
    step_vector: np.ndarray | None = None
    shear = 0.0
    gaps: list[Gap] = []
    irregular = False
    if placed and len(stack) >= 2:
        positions = np.array([f.position for f in stack])
        steps = np.diff(positions)
        step_mm = float(np.median(steps))
        step_vector = (stack[-1].ipp - first.ipp) / (len(stack) - 1)
        length = float(np.linalg.norm(step_vector))
        if length > 0:
            cosine = min(1.0, abs(float(np.dot(step_vector, normal))) / length)
            shear = math.degrees(math.acos(cosine))
        gaps, irregular = _spacing(positions, steps, step_mm, log)

    tilt_value = first.header.get("GantryDetectorTilt") if placed else None
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
        geometry_known=placed,
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


def numbering_direction(stack: list[Frame], log: DropLog) -> tuple[bool, str]:
    """(descending, what decided it) for a stack sorted ascending along its normal.

    The key is (InstanceNumber, frame number): the frames of one enhanced object go in
    their stored order. Frames without an InstanceNumber are left out of the count.
    """
    keys = [
        (number, f.frame_index or 0) for f in stack if (number := f.instance_number) is not None
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
