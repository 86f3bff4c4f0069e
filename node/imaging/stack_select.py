"""Which frames form the stack: one consistent group, one acquisition, one frame a position.

Steps 2–4 of :func:`node.imaging.stack.assemble_stack`; every frame left out is
counted and noted in the :class:`~node.imaging.stack_types.DropLog` with its reason.
"""

from __future__ import annotations

import numpy as np

from node.imaging.errors import ImagingError
from node.imaging.stack_geometry import SPACING_ABS_TOLERANCE_MM, SPACING_REL_TOLERANCE
from node.imaging.stack_types import DropLog, DropReason, Frame

# Orientation cosines of one acquisition differ by float noise (~1e-6); a
# genuinely different plane differs by ≫ 0.01. 1e-3 separates the two.
ORIENTATION_TOLERANCE = 1e-3
# Two slices closer than this along the normal are the same position (mm).
DUPLICATE_TOLERANCE_MM = 0.01

_GroupKey = tuple[str, str, int, int]  # (series, modality, rows, columns)


def largest_consistent_group(frames: list[Frame], log: DropLog, series_uid: str) -> list[Frame]:
    """Group by (series, modality, matrix, orientation) and keep the largest group."""
    groups: list[tuple[_GroupKey, np.ndarray, list[Frame]]] = []
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
        reasons = _differences(key, orientation, best_key, best_orientation)
        log.drop(
            DropReason.OTHER_STACK,
            [m.label for m in members],
            f"slice(s) outside the main stack ({'; '.join(reasons)})",
        )
    return list(stack)


def _differences(
    key: _GroupKey, orientation: np.ndarray, best_key: _GroupKey, best_orientation: np.ndarray
) -> list[str]:
    """What sets a group apart from the kept one, with both values."""
    reasons: list[str] = []
    if key[0] != best_key[0]:
        reasons.append(f"series {key[0]}")
    if key[1] != best_key[1]:
        reasons.append(f"modality {key[1] or '<none>'}")
    if key[2:] != best_key[2:]:
        reasons.append(f"matrix {key[2]}x{key[3]} vs {best_key[2]}x{best_key[3]}")
    if not _same_orientation(orientation, best_orientation):
        reasons.append(f"orientation {_fmt_vector(orientation)} vs {_fmt_vector(best_orientation)}")
    return reasons


def _same_orientation(a: np.ndarray, b: np.ndarray) -> bool:
    return bool(np.max(np.abs(a - b)) <= ORIENTATION_TOLERANCE)


def one_acquisition(stack: list[Frame], log: DropLog) -> list[Frame]:
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


def drop_duplicate_positions(stack: list[Frame], log: DropLog) -> list[Frame]:
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
    number = item.instance_number
    return (
        0 if item.original else 1,
        1 << 30 if number is None else number,
        item.frame_index or 0,
        item.label,
    )


def _fmt_vector(values: np.ndarray) -> str:
    return "[" + ", ".join(f"{v:.3f}" for v in values) + "]"
