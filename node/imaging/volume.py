"""CT / MR series → the ≤ 85 RGB slices MedGemma 1.5 was trained on.

The path, and why each step is there:

1. Read headers only (paths) so a 600-slice series costs a few MB, not its pixels.
   Enhanced multi-frame objects contribute one frame per slice, each with the
   geometry and rescale of its functional groups (:mod:`node.imaging.multiframe`).
2. Drop what is not part of the stack and sort on the position along the slice
   normal, ``IPP · (row × col)`` (:mod:`node.imaging.stack`), run in the direction
   in which the InstanceNumbers increase. The notebook sorts by InstanceNumber and
   the container by IPP[0]; both are wrong for some series, and the direction keeps
   a normally numbered series in the notebook's order. Every drop, gap and
   irregular step is noted with its values and counted in ``VolumeInput.geometry``.
3. The model saw axial slices. A sagittal, coronal, oblique or sheared (tilted
   gantry) stack is sent in its own plane with a note saying so, or, with
   ``resample_axial=True``, resampled onto an axial grid with SimpleITK
   (:mod:`node.imaging.resample`). Gaps are never filled: resampling would
   invent slices.
4. Sample with the notebook's exact index formula and decode only those slices
   (all of them only when resampling).
5. CT: HU through three fixed windows into R, G, B (a 2049-entry lookup table
   built with the notebook's own float32 arithmetic, rounded with ``np.round``).
   MR: one min–max over the whole volume (every slice, not only the sampled
   ones), rounded, grey in R = G = B (:mod:`node.imaging.volume_windows`).
6. Zero-pad a non-square slice to a square, centred, as the official container
   does to every image (:mod:`node.imaging.square`); ``VolumeInput.padding``
   says where the slice sits.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from PIL import Image
from pydicom.dataset import Dataset

from node.imaging.errors import ImagingError
from node.imaging.pixels import decode_frames
from node.imaging.resample import AxialGrid, AxialResampler, axial_grid, stack_to_sitk
from node.imaging.square import Padding, pad_to_square, padding_for
from node.imaging.stack import SUPPORTED_MODALITIES, assemble_stack
from node.imaging.stack_geometry import SHEAR_TOLERANCE_DEG
from node.imaging.stack_types import Frame, Plane, Stack
from node.imaging.volume_windows import (
    AIR_HU,
    CT_WINDOWS,
    ValueRange,
    background_value,
    ct_rgb,
    grey_images,
    modality_values,
)
from node.inference.budgets import MAX_VOLUME_SLICES as MAX_SLICES

logger = logging.getLogger(__name__)

__all__ = [
    "CT_WINDOWS",
    "MAX_SLICES",
    "SUPPORTED_MODALITIES",
    "SliceSource",
    "VolumeInput",
    "sample_indices",
    "series_to_sitk",
    "series_to_volume_input",
]

Sources = Sequence[Dataset] | Sequence[Path] | Sequence[str]


@dataclass(frozen=True)
class SliceSource:
    """The stored image one sent slice is, so a result can point a viewer at it."""

    sop_class_uid: str
    sop_instance_uid: str
    frame_number: int | None = None  # 1-based, for a frame of a multi-frame object


@dataclass(frozen=True)
class VolumeInput:
    """The model input for one CT or MR series, plus how it was derived."""

    images: list[Image.Image]  # ≤ max_slices RGB 8-bit square slices, in the order sent
    # Indices into the stack sorted ascending along the normal (or the resampled grid),
    # in the order sent: descending when the InstanceNumbers run that way.
    slice_indices: list[int]
    z_positions: list[float]  # along the normal (as acquired) or patient z (resampled), mm
    series_uid: str
    modality: str  # "CT" or "MR"
    notes: list[str]  # what was dropped, irregular, or not as the model saw in training
    plane: str = "axial"  # plane of the images sent: axial/sagittal/coronal/oblique/unknown
    resampled: bool = False  # True when resampled onto an axial grid
    # JSON-serialisable: spacing, slice counts, gaps, irregular, plane, dropped counts by reason.
    geometry: dict[str, object] = field(default_factory=dict)
    # Per sent image, the instance (and frame) it is; None for a resampled slice, which
    # is made from several.
    slice_sources: list[SliceSource | None] = field(default_factory=list)
    # The SOP Instance UIDs the sent images were made from, each once, in stack order:
    # the sampled slices' instances, or every stack instance when resampled.
    source_instance_uids: list[str] = field(default_factory=list)
    # Their headers, in the same order, as the stack read them: the report's evidence.
    source_headers: list[Dataset] = field(default_factory=list)
    # Zeros around each slice to make it square (the same for every slice).
    padding: Padding = field(default_factory=Padding)


def sample_indices(n: int, max_slices: int = MAX_SLICES) -> list[int]:
    """Indices into an ``n``-slice stack, exactly as the MedGemma CT notebook picks them.

    ``n ≤ max_slices``: every slice. Otherwise ``round(i / max_slices * (n − 1))``
    for ``i`` in ``1 … max_slices`` (the notebook starts at 1, so slice 0 is
    skipped while the last slice is always kept; we keep that quirk because it
    is what the model was evaluated on). Python's ``round`` (half to even) is
    the notebook's.
    """
    if n < 0 or max_slices < 1:
        raise ValueError(f"n must be ≥ 0 and max_slices ≥ 1 (got n={n}, max_slices={max_slices})")
    if n <= max_slices:
        return list(range(n))
    return [round(i / max_slices * (n - 1)) for i in range(1, max_slices + 1)]


def series_to_volume_input(
    datasets: Sources,
    *,
    max_slices: int = MAX_SLICES,
    resample_axial: bool = False,
) -> VolumeInput:
    """Turn one CT or MR series into ≤ ``max_slices`` RGB slices for MedGemma 1.5.

    Parameters
    ----------
    datasets
        The series' instances, as datasets or file paths, in any order: classic
        slices, enhanced multi-frame objects (one or several), or both. Paths are
        preferred: only headers are read up front and only sampled slices are
        decoded.
    max_slices
        The slice budget (85 in the notebook and the report).
    resample_axial
        Resample a sagittal, coronal, oblique or sheared (tilted gantry) stack
        onto an axial grid (SimpleITK, linear, air / 0 outside). Off: such a
        stack is sent in its own plane with a note. Axial stacks are never
        resampled, and neither are stacks with gaps or irregular spacing (a
        note says why).

    Raises
    ------
    ImagingError
        No usable slice, a modality other than CT/MR, or a sampled slice whose
        pixel data can't be decoded. The message names the SeriesInstanceUID.

    Notes
    -----
    Unreadable files, instances without pixel data or with a colour
    PhotometricInterpretation are *dropped with a note* (a stray file in a
    spool folder shouldn't sink a 300-slice series); a sampled slice that reads
    but can't be decoded *raises*, because silently sampling around it would
    change the geometry the model sees.
    """
    if max_slices < 1:
        raise ValueError(f"max_slices must be ≥ 1, got {max_slices}")
    stack = assemble_stack(datasets)
    notes = stack.notes
    geometry = stack.geometry()
    non_axial = stack.geometry_known and (
        stack.plane is not Plane.AXIAL or stack.shear_deg > SHEAR_TOLERANCE_DEG
    )

    grid: AxialGrid | None = None
    if non_axial and resample_axial:
        refusal = _why_not_resample(stack)
        if refusal is None:
            images, indices, z_positions, grid = _resampled_images(stack, max_slices, notes)
            notes.append(
                f"resampled from the acquisition plane ({_plane_text(stack)}) to axial with "
                f"SimpleITK (linear; {grid.spacing[0]:.2f} mm pixels, slices "
                f"{grid.spacing[2]:.2f} mm apart, {grid.size[2]} axial slices; "
                f"{background_value(stack.modality):g} outside the source)"
            )
            geometry["resampled_grid"] = {
                "origin_mm": [round(v, 4) for v in grid.origin],
                "spacing_mm": [round(v, 4) for v in grid.spacing],
                "size": list(grid.size),
            }
        else:
            notes.append(f"not resampled to axial: {refusal}")
    # A resampled slice is made from every frame; an acquired one is one frame.
    used_frames = stack.frames
    if grid is None:
        n = len(stack.frames)
        picked = sample_indices(n, max_slices)
        sent = stack.sent_frames
        used_frames = [sent[i] for i in picked]
        indices = [n - 1 - i for i in picked] if stack.descending else picked
        images = _acquired_images(stack, used_frames, notes)
        z_positions = [f.position for f in used_frames]
        if non_axial:
            notes.append(
                f"sent in the acquisition plane ({_plane_text(stack)}); model was trained on axial"
            )
    if len(stack.frames) > len(indices):
        logger.info(
            "series %s: sampled %d of %d slices", stack.series_uid, len(indices), len(stack.frames)
        )

    plane = Plane.AXIAL if grid is not None else stack.plane
    padding = padding_for(images[0].height, images[0].width) if images else Padding()
    if images and not padding.is_none:
        images = [Image.fromarray(pad_to_square(np.asarray(image))[0]) for image in images]
    if grid is not None:
        geometry.update(slice_order="ascending", slice_order_from="resampled: ascending z")
    geometry.update(
        plane=plane.value,
        acquisition_plane=stack.plane.value,
        resampled=grid is not None,
        n_slices_sent=len(images),
        padding=padding.as_dict(),
    )
    for note in notes:
        logger.info("series %s: %s", stack.series_uid, note)
    sources = {
        uid: frame.header for frame in used_frames if (uid := _sop_instance_uid(frame)) is not None
    }
    return VolumeInput(
        images=images,
        slice_indices=indices,
        z_positions=[float(z) for z in z_positions],
        series_uid=stack.series_uid,
        modality=stack.modality,
        notes=notes,
        plane=plane.value,
        resampled=grid is not None,
        geometry=geometry,
        slice_sources=(
            [_slice_source(f) for f in used_frames] if grid is None else [None] * len(images)
        ),
        source_instance_uids=list(sources),
        source_headers=list(sources.values()),
        padding=padding,
    )


def series_to_sitk(
    datasets: Sources, *, allow_irregular: bool = False, mask_padding: bool = False
) -> sitk.Image:
    """The whole sorted stack as a SimpleITK image in patient (LPS) space.

    Origin: the first slice's ImagePositionPatient; spacing: (PixelSpacing[1],
    PixelSpacing[0], median step along the normal); direction columns: row
    cosine, column cosine, slice normal — what ``sitk.ImageSeriesReader`` builds
    for a regular series. Values are the Modality LUT's (HU for CT): int16 when
    the rescale is integral and the values fit, else int32 or float32.
    A sheared (tilted-gantry) stack gets a non-orthonormal direction whose third
    column is the direction the slices advance in, so every voxel sits where
    the scanner put it (resample it before tools that need orthonormal axes).

    Parameters
    ----------
    allow_irregular
        Gaps or irregular spacing can't be represented by one step; by default
        they raise. True places the slices on the median step anyway.
    mask_padding
        Set Pixel Padding to −1024 HU (CT) / 0 (MR) instead of its rescaled value.

    Raises
    ------
    ImagingError
        As :func:`series_to_volume_input`; also for gaps or irregular spacing
        (unless allowed), frames without geometry, or no PixelSpacing.
    """
    stack = assemble_stack(datasets)
    if not stack.geometry_known:
        raise ImagingError(f"series {stack.series_uid}: frames have no geometry to place them")
    if not stack.regular and not allow_irregular:
        raise ImagingError(
            f"series {stack.series_uid}: slices are not evenly spaced, one step can't place them "
            f"({'; '.join(n for n in stack.notes if 'gap' in n or 'irregular' in n)})"
        )
    volume = _stack_volume(
        stack, fill_padding=background_value(stack.modality) if mask_padding else None
    )
    return stack_to_sitk(stack, volume)


# --- as acquired -------------------------------------------------------------------


def _acquired_images(stack: Stack, sampled: list[Frame], notes: list[str]) -> list[Image.Image]:
    if stack.modality == "CT":
        images = []
        for frame, raw in zip(sampled, decode_frames(sampled, stack.series_uid), strict=True):
            hu, padding = modality_values(frame, raw)
            if padding is not None:
                hu[padding] = AIR_HU
            images.append(Image.fromarray(ct_rgb(hu)))
        return images
    rows, columns = stack.frames[0].key[2], stack.frames[0].key[3]
    # One float32 block of the sampled slices, filled slice by slice: no list of
    # per-slice arrays alive. The min–max is the whole volume's, so every frame is
    # decoded once for its range (the official recipe normalises the volume, not the
    # sample); only the sampled ones are kept.
    volume = np.empty((len(sampled), rows, columns), dtype=np.float32)
    slots = {id(frame): k for k, frame in enumerate(sampled)}
    value_range = ValueRange()
    for frame, raw in zip(stack.frames, decode_frames(stack.frames, stack.series_uid), strict=True):
        values, padding = modality_values(frame, raw)
        value_range.add(values, padding)
        k = slots.get(id(frame))
        if k is not None:
            volume[k] = values
            if padding is not None:
                volume[k][padding] = np.nan
    return grey_images(volume, value_range, notes)


# --- resampled ----------------------------------------------------------------------


def _why_not_resample(stack: Stack) -> str | None:
    if len(stack.frames) < 2:
        return "a single slice has no extent along its normal"
    if stack.pixel_spacing is None:
        return "no PixelSpacing, so the slices can't be placed in mm"
    if stack.gaps:
        return f"the stack has {len(stack.gaps)} gap(s); resampling would invent slices"
    if stack.irregular:
        return "irregular slice spacing can't be placed on one grid"
    return None


def _resampled_images(
    stack: Stack, max_slices: int, notes: list[str]
) -> tuple[list[Image.Image], list[int], list[float], AxialGrid]:
    background = background_value(stack.modality)
    value_range = ValueRange()
    image = stack_to_sitk(stack, _stack_volume(stack, fill_padding=background, seen=value_range))
    grid = axial_grid(image)
    indices = sample_indices(grid.size[2], max_slices)
    resampler = AxialResampler(image, grid, default_value=background)
    if stack.modality == "CT":
        images = [Image.fromarray(ct_rgb(resampler.slice(k))) for k in indices]
    else:
        block = np.empty((len(indices), grid.size[1], grid.size[0]), dtype=np.float32)
        for n, k in enumerate(indices):
            block[n] = resampler.slice(k)
        images = grey_images(block, value_range, notes)
    return images, indices, [grid.z(k) for k in indices], grid


def _stack_volume(
    stack: Stack, *, fill_padding: float | None, seen: ValueRange | None = None
) -> np.ndarray:
    """Every frame's modality values in one ``(slices, rows, columns)`` block.

    int16 while the rescale is integral and values fit (a 1000-slice 512² CT is
    500 MiB), widened to int32 or float32 only when a slice needs it. ``seen``, when
    given, takes the range of the values that are not padding.
    """
    frames = stack.frames
    rows, columns = frames[0].key[2], frames[0].key[3]
    volume = np.empty((len(frames), rows, columns), dtype=np.int16)
    decoded = decode_frames(frames, stack.series_uid)
    for k, (frame, raw) in enumerate(zip(frames, decoded, strict=True)):
        values, padding = modality_values(frame, raw)
        if seen is not None:
            seen.add(values, padding)
        if padding is not None and fill_padding is not None:
            values[padding] = fill_padding
        if values.dtype.kind == "f" and volume.dtype.kind != "f":
            volume = volume.astype(np.float32)
        elif (
            volume.dtype == np.int16
            and values.size
            and (
                int(values.min()) < np.iinfo(np.int16).min
                or int(values.max()) > np.iinfo(np.int16).max
            )
        ):
            volume = volume.astype(np.int32)
        volume[k] = values
    return volume


# --- small helpers -------------------------------------------------------------------


def _sop_instance_uid(frame: Frame) -> str | None:
    uid = frame.header.get("SOPInstanceUID")
    return str(uid) if uid else None


def _slice_source(frame: Frame) -> SliceSource | None:
    """The stored image a sampled frame is; None when its header names no instance."""
    uid = _sop_instance_uid(frame)
    sop_class = frame.header.get("SOPClassUID")
    if uid is None or not sop_class:
        return None
    number = frame.frame_index + 1 if frame.frame_index is not None else None
    return SliceSource(str(sop_class), uid, number)


def _plane_text(stack: Stack) -> str:
    text = stack.plane.value
    if stack.plane is Plane.OBLIQUE:
        text += f", {stack.obliquity_deg:.1f}° from {stack.nearest_plane.value}"
    if stack.shear_deg > SHEAR_TOLERANCE_DEG:
        text += f", sheared {stack.shear_deg:.1f}° by gantry tilt"
    return text
