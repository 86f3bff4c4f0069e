"""The stack's data model: frames, drop reasons, planes, gaps and the stack itself.

Built by :func:`node.imaging.stack.assemble_stack`; read by the volume path and
:mod:`node.imaging.resample`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset

from node.imaging.multiframe import FrameAttributes

# Notes list at most this many UIDs per reason, so a 300-slice drop stays readable.
_MAX_UIDS_IN_NOTE = 3


class DropReason(StrEnum):
    """Why an instance or frame is not in the stack (keys of ``geometry["dropped"]``)."""

    UNREADABLE = "unreadable"
    NO_PIXEL_DATA = "no_pixel_data"
    UNSUPPORTED_PHOTOMETRIC = "unsupported_photometric"
    LOCALIZER = "localizer"
    NO_GEOMETRY = "no_geometry"
    OTHER_STACK = "other_stack"
    OTHER_ACQUISITION = "other_acquisition"
    DUPLICATE_POSITION = "duplicate_position"


class Plane(StrEnum):
    AXIAL = "axial"
    SAGITTAL = "sagittal"
    CORONAL = "coronal"
    OBLIQUE = "oblique"
    UNKNOWN = "unknown"  # a multi-frame object without per-frame geometry


AXIS_PLANES = (Plane.SAGITTAL, Plane.CORONAL, Plane.AXIAL)  # normal along x, y, z (LPS)


@dataclass(frozen=True, eq=False)
class Frame:
    """One slice, or one frame of a multi-frame object, with its own geometry."""

    source: Dataset | Path
    header: Dataset
    attributes: FrameAttributes
    label: str  # SOPInstanceUID (+ " frame n"), or the file name when there is none
    key: tuple[str, str, int, int]  # (series, modality, rows, columns)
    orientation: np.ndarray  # 6 cosines
    normal: np.ndarray  # unit row × col
    ipp: np.ndarray  # ImagePositionPatient
    position: float  # along the normal (mm)

    @property
    def frame_index(self) -> int | None:
        return self.attributes.index

    @property
    def original(self) -> bool:
        return self.attributes.image_type[:1] == ("ORIGINAL",)

    @property
    def slope(self) -> float:
        slope = self.attributes.rescale_slope
        return 1.0 if slope is None or slope == 0 else slope

    @property
    def intercept(self) -> float:
        intercept = self.attributes.rescale_intercept
        return 0.0 if intercept is None else intercept

    @property
    def instance_number(self) -> int | None:
        """The header's InstanceNumber; None when absent, blank or not an integer."""
        value = self.header.get("InstanceNumber")
        if value is None or str(value).strip() == "":
            return None
        try:
            return int(value)
        except (TypeError, ValueError):
            return None


@dataclass(frozen=True)
class Gap:
    """A step along the normal larger than ``GAP_FACTOR`` × the expected spacing."""

    after_index: int  # the gap lies between sorted slices after_index and after_index + 1
    position_mm: float
    next_position_mm: float
    step_mm: float
    expected_mm: float

    def as_dict(self) -> dict[str, float | int]:
        return {
            "after_index": self.after_index,
            "position_mm": round(self.position_mm, 4),
            "next_position_mm": round(self.next_position_mm, 4),
            "step_mm": round(self.step_mm, 4),
            "expected_mm": round(self.expected_mm, 4),
        }


@dataclass
class Stack:
    """The sorted stack, its geometry, and what was dropped on the way."""

    frames: list[Frame]
    series_uid: str
    modality: str
    plane: Plane
    orientation: np.ndarray
    normal: np.ndarray
    pixel_spacing: tuple[float, float] | None  # (between rows, between columns)
    step_mm: float | None  # median step along the normal; None below 2 slices
    step_vector: np.ndarray | None  # mean IPP step, first → last (shows shear)
    obliquity_deg: float  # normal vs the nearest patient axis
    shear_deg: float  # stacking direction vs the normal (gantry tilt)
    gaps: list[Gap]
    irregular: bool
    dropped: dict[str, int]
    notes: list[str]
    geometry_known: bool = True
    gantry_tilt_deg: float | None = None
    # The order the model gets the slices in: against the normal when the series'
    # InstanceNumbers increase that way (the notebook sends slices by InstanceNumber).
    # ``frames`` stay ascending along the normal either way; see :meth:`sent_frames`.
    descending: bool = False
    order_source: str = "InstanceNumber"  # or why the default (ascending) was taken

    @property
    def sent_frames(self) -> list[Frame]:
        """``frames`` in the order they are sent to the model."""
        return self.frames[::-1] if self.descending else self.frames

    @property
    def nearest_plane(self) -> Plane:
        """The patient plane the normal is closest to (for oblique stacks)."""
        return AXIS_PLANES[int(np.argmax(np.abs(self.normal)))]

    @property
    def regular(self) -> bool:
        """True when a regular grid (one step) places every slice where it is."""
        return self.geometry_known and not self.gaps and not self.irregular

    def geometry(self) -> dict[str, object]:
        """A JSON-serialisable summary for the job record."""
        spacing = None
        if self.pixel_spacing is not None:
            spacing = [
                round(self.pixel_spacing[1], 4),
                round(self.pixel_spacing[0], 4),
                round(self.step_mm, 4) if self.step_mm is not None else None,
            ]
        return {
            "plane": self.plane.value,
            "orientation": [round(float(v), 6) for v in self.orientation],
            "spacing_mm": spacing,  # [column step (x), row step (y), slice step (z)]
            "slice_step_mm": round(self.step_mm, 4) if self.step_mm is not None else None,
            "n_slices_in_stack": len(self.frames),
            "multiframe": any(f.frame_index is not None for f in self.frames),
            "gaps": [gap.as_dict() for gap in self.gaps],
            "irregular": self.irregular,
            "obliquity_deg": round(self.obliquity_deg, 3),
            "shear_deg": round(self.shear_deg, 3),
            "gantry_tilt_deg": self.gantry_tilt_deg,
            "geometry_known": self.geometry_known,
            "slice_order": "descending" if self.descending else "ascending",  # along the normal
            "slice_order_from": self.order_source,
            "dropped": dict(self.dropped),
        }


@dataclass
class DropLog:
    """Notes and per-reason counts of what was left out."""

    notes: list[str] = field(default_factory=list)
    dropped: dict[str, int] = field(default_factory=dict)

    def drop(self, reason: DropReason, labels: Sequence[str], what: str) -> None:
        if not labels:
            return
        self.dropped[reason.value] = self.dropped.get(reason.value, 0) + len(labels)
        self.notes.append(f"dropped {len(labels)} {what}: {short_list(labels)}")


def short_list(items: Sequence[str]) -> str:
    shown = ", ".join(items[:_MAX_UIDS_IN_NOTE])
    return shown + (
        f" (+{len(items) - _MAX_UIDS_IN_NOTE} more)" if len(items) > _MAX_UIDS_IN_NOTE else ""
    )
