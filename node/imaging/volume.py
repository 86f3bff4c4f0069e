"""CT / MR series → the ≤ 85 RGB slices MedGemma 1.5 was trained on.

The path, and why each step is there:

1. Read headers only (paths) so a 600-slice series costs a few MB, not its pixels.
2. Drop what is not part of the axial stack: unreadable files, localizers, slices
   without geometry, and every slice outside the largest group that shares
   series, modality, matrix size and orientation. Each drop becomes a note.
3. Sort on the position along the slice normal, ``IPP · (row × col)``. The
   notebook sorts by InstanceNumber and the container by IPP[0]; both are wrong
   for some series (InstanceNumber restarts, sagittal-ish stacks).
4. Remove duplicate positions, preferring ORIGINAL over DERIVED; note gaps and
   irregular spacing (kept, because resampling would invent slices).
5. Sample with the notebook's exact index formula and decode only those slices.
6. CT: HU through three fixed windows into R, G, B (a 2049-entry lookup table
   built with the notebook's own float32 arithmetic). MR: one min–max over the
   sampled volume, grey in R = G = B.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.pixels import apply_modality_lut, pixel_array

from node.imaging.errors import ImagingError
from node.imaging.radiograph import pixel_padding_mask

logger = logging.getLogger(__name__)

MAX_SLICES = 85
"""MedGemma 1.5's slice budget: 85 × 256 = 21,760 image tokens."""

CT_WINDOWS: tuple[tuple[int, int], tuple[int, int], tuple[int, int]] = (
    (-1024, 1024),  # R: wide (air … bone)
    (-135, 215),  # G: soft tissue. The container's (135, 215) is a sign slip; notebook/report: −135
    (0, 80),  # B: brain
)
"""HU clip ranges per channel, from the 1.5 CT notebook and technical report."""

SUPPORTED_MODALITIES = frozenset({"CT", "MR"})

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
# Header-only reads: elements larger than this stay on disk (pixel data above all).
_DEFER_SIZE = 1024
_PIXEL_DATA_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
# Notes list at most this many UIDs per reason, so a 300-slice drop stays readable.
_MAX_UIDS_IN_NOTE = 3


@dataclass(frozen=True)
class VolumeInput:
    """The model input for one CT or MR series, plus how it was derived."""

    images: list[Image.Image]  # ≤ max_slices RGB 8-bit slices, in order along +normal
    slice_indices: list[int]  # indices into the sorted, de-duplicated stack
    z_positions: list[float]  # position along the normal of each sampled slice (mm)
    series_uid: str
    modality: str  # "CT" or "MR"
    notes: list[str]  # what was dropped or found irregular, and why


@dataclass(frozen=True)
class _Slice:
    source: Dataset | Path
    header: Dataset
    label: str  # SOPInstanceUID, or the file name when there is none
    position: float  # along the normal (mm)


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
    datasets: Sequence[Dataset] | Sequence[Path] | Sequence[str],
    *,
    max_slices: int = MAX_SLICES,
) -> VolumeInput:
    """Turn one CT or MR series into ≤ ``max_slices`` RGB slices for MedGemma 1.5.

    Parameters
    ----------
    datasets
        The series' instances, as datasets or file paths, in any order. Paths are
        preferred: only headers are read up front and only sampled slices are
        decoded.
    max_slices
        The slice budget (85 in the notebook and the report).

    Raises
    ------
    ImagingError
        No usable slice, a modality other than CT/MR, enhanced multi-frame
        objects, or a sampled slice whose pixel data can't be decoded. The
        message names the SeriesInstanceUID.

    Notes
    -----
    Unreadable files are *dropped with a note* (a stray non-DICOM file in a
    spool folder shouldn't sink a 300-slice series); a sampled slice that reads
    but can't be decoded *raises*, because silently sampling around it would
    change the geometry the model sees.
    """
    if max_slices < 1:
        raise ValueError(f"max_slices must be ≥ 1, got {max_slices}")
    notes: list[str] = []
    headers = _read_headers(datasets, notes)
    series_uid = _majority_series_uid(headers)
    if not headers:
        raise ImagingError(f"series {series_uid}: no readable DICOM instance")

    _reject_multiframe(headers, series_uid)
    headers = _drop_localizers(headers, notes)
    stack = _largest_consistent_stack(headers, notes, series_uid)
    series_uid = str(stack[0].header.get("SeriesInstanceUID", series_uid))
    modality = str(stack[0].header.get("Modality", "")).upper()
    if modality not in SUPPORTED_MODALITIES:
        raise ImagingError(
            f"series {series_uid}: modality {modality or '<none>'!r} is not a volume "
            f"modality (supported: {', '.join(sorted(SUPPORTED_MODALITIES))})"
        )

    stack.sort(key=lambda s: (s.position, s.label))
    stack = _drop_duplicate_positions(stack, notes)
    _note_spacing(stack, notes)

    indices = sample_indices(len(stack), max_slices)
    sampled = [stack[i] for i in indices]
    if len(stack) > len(indices):
        logger.info("series %s: sampled %d of %d slices", series_uid, len(indices), len(stack))

    if modality == "CT":
        images = [Image.fromarray(_ct_rgb(_ct_hu(s, series_uid))) for s in sampled]
    else:
        images = _mr_images(sampled, series_uid, notes)

    for note in notes:
        logger.info("series %s: %s", series_uid, note)
    return VolumeInput(
        images=images,
        slice_indices=indices,
        z_positions=[s.position for s in sampled],
        series_uid=series_uid,
        modality=modality,
        notes=notes,
    )


# --- reading and selecting -------------------------------------------------


def _read_headers(
    sources: Sequence[Dataset] | Sequence[Path] | Sequence[str], notes: list[str]
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
            # defer_size keeps pixel data on disk: the header read is ~1 ms and
            # the element still exists, so "has pixel data" can be checked.
            header = pydicom.dcmread(path, defer_size=_DEFER_SIZE)
        except Exception as exc:  # InvalidDicomError, OSError, EOF in a header
            unreadable.append(path.name)
            logger.warning("skipping %s: not readable as DICOM (%s)", path.name, exc)
            continue
        out.append((path, header))
    if unreadable:
        notes.append(f"dropped {len(unreadable)} unreadable file(s): {_short_list(unreadable)}")
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


def _reject_multiframe(headers: list[tuple[Dataset | Path, Dataset]], series_uid: str) -> None:
    for _, header in headers:
        frames = int(header.get("NumberOfFrames", 1) or 1)
        if frames > 1 or "PerFrameFunctionalGroupsSequence" in header:
            uid = header.get("SeriesInstanceUID", series_uid)
            raise ImagingError(
                f"series {uid}: enhanced multi-frame not supported yet "
                f"(SOP instance {header.get('SOPInstanceUID', '?')}, {frames} frames)"
            )


def _drop_localizers(
    headers: list[tuple[Dataset | Path, Dataset]], notes: list[str]
) -> list[tuple[Dataset | Path, Dataset]]:
    kept, dropped = [], []
    for source, header in headers:
        image_type = [str(v).upper() for v in (header.get("ImageType") or [])]
        if "LOCALIZER" in image_type:
            dropped.append(_label(source, header))
        else:
            kept.append((source, header))
    if dropped:
        notes.append(f"dropped {len(dropped)} localizer(s): {_short_list(dropped)}")
    return kept


def _largest_consistent_stack(
    headers: list[tuple[Dataset | Path, Dataset]], notes: list[str], series_uid: str
) -> list[_Slice]:
    """Group by (series, modality, matrix, orientation) and keep the largest group."""
    groups: list[tuple[tuple[str, str, int, int], np.ndarray, list[_Slice]]] = []
    no_geometry: list[str] = []
    no_pixels: list[str] = []
    for source, header in headers:
        label = _label(source, header)
        if not any(keyword in header for keyword in _PIXEL_DATA_KEYWORDS):
            no_pixels.append(label)
            continue
        geometry = _geometry(header)
        if geometry is None:
            no_geometry.append(label)
            continue
        orientation, normal = geometry
        position = float(np.dot(np.asarray(header.ImagePositionPatient, dtype=float), normal))
        key = (
            str(header.get("SeriesInstanceUID", "")),
            str(header.get("Modality", "")).upper(),
            int(header.get("Rows", 0)),
            int(header.get("Columns", 0)),
        )
        item = _Slice(source=source, header=header, label=label, position=position)
        for group_key, group_orientation, members in groups:
            if group_key == key and _same_orientation(group_orientation, orientation):
                members.append(item)
                break
        else:
            groups.append((key, orientation, [item]))

    if no_pixels:
        notes.append(
            f"dropped {len(no_pixels)} instance(s) without pixel data: {_short_list(no_pixels)}"
        )
    if no_geometry:
        notes.append(
            f"dropped {len(no_geometry)} slice(s) without a usable ImagePositionPatient/"
            f"ImageOrientationPatient: {_short_list(no_geometry)}"
        )
    if not groups:
        raise ImagingError(f"series {series_uid}: no usable slice (need pixel data and geometry)")

    # Largest group wins; ties go to the first seen, which keeps the choice stable.
    best = max(range(len(groups)), key=lambda i: len(groups[i][2]))
    best_key, best_orientation, stack = groups[best]
    for i, (key, orientation, members) in enumerate(groups):
        if i == best:
            continue
        reasons = []
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
        notes.append(
            f"dropped {len(members)} slice(s) outside the main stack ({'; '.join(reasons)}): "
            f"{_short_list([m.label for m in members])}"
        )
    return list(stack)


def _geometry(header: Dataset) -> tuple[np.ndarray, np.ndarray] | None:
    """(orientation cosines as 6 floats, unit slice normal) or None if unusable."""
    iop = header.get("ImageOrientationPatient")
    ipp = header.get("ImagePositionPatient")
    if iop is None or ipp is None or len(iop) != 6 or len(ipp) != 3:
        return None
    orientation = np.asarray([float(v) for v in iop], dtype=float)
    normal = np.cross(orientation[:3], orientation[3:])
    length = float(np.linalg.norm(normal))
    if not math.isfinite(length) or length < 0.5:  # degenerate or non-orthogonal cosines
        return None
    return orientation, normal / length


def _same_orientation(a: np.ndarray, b: np.ndarray) -> bool:
    return bool(np.max(np.abs(a - b)) <= ORIENTATION_TOLERANCE)


def _drop_duplicate_positions(stack: list[_Slice], notes: list[str]) -> list[_Slice]:
    """One slice per position (stack must be sorted); ORIGINAL beats DERIVED.

    Among equals the lower InstanceNumber, then the smaller UID, wins, so the
    choice doesn't depend on file order.
    """
    kept: list[_Slice] = []
    dropped: list[str] = []
    run: list[_Slice] = []
    for item in [*stack, None]:
        if run and (item is None or item.position - run[0].position > DUPLICATE_TOLERANCE_MM):
            run.sort(key=_duplicate_preference)
            kept.append(run[0])
            dropped.extend(f"{d.label} (z={d.position:.2f})" for d in run[1:])
            run = []
        if item is not None:
            run.append(item)
    if dropped:
        notes.append(
            f"dropped {len(dropped)} duplicate-position slice(s), ORIGINAL preferred: "
            f"{_short_list(dropped)}"
        )
    return kept


def _duplicate_preference(item: _Slice) -> tuple[int, int, str]:
    image_type = [str(v).upper() for v in (item.header.get("ImageType") or [])]
    derived = 0 if image_type[:1] == ["ORIGINAL"] else 1
    instance = item.header.get("InstanceNumber")
    number = int(instance) if instance is not None and str(instance).strip() != "" else 1 << 30
    return derived, number, item.label


def _note_spacing(stack: list[_Slice], notes: list[str]) -> None:
    """Note gaps and irregular spacing with the values; the slices are kept."""
    if len(stack) < 3:
        return
    positions = np.array([s.position for s in stack])
    steps = np.diff(positions)
    median = float(np.median(steps))
    tolerance = max(SPACING_ABS_TOLERANCE_MM, SPACING_REL_TOLERANCE * median)
    gaps = [
        (float(positions[i]), float(positions[i + 1]), float(steps[i]))
        for i in np.flatnonzero(steps > GAP_FACTOR * median)
    ]
    if gaps:
        shown = ", ".join(
            f"{step:.2f} mm between z={a:.2f} and z={b:.2f}" for a, b, step in gaps[:3]
        )
        more = f" (+{len(gaps) - 3} more)" if len(gaps) > 3 else ""
        notes.append(
            f"{len(gaps)} gap(s) in the stack (median spacing {median:.2f} mm): {shown}{more}"
        )
    elif float(np.max(np.abs(steps - median))) > tolerance:
        notes.append(
            f"irregular slice spacing: {float(steps.min()):.3f}–{float(steps.max()):.3f} mm "
            f"(median {median:.3f} mm)"
        )


# --- pixels ----------------------------------------------------------------


def _decode(item: _Slice, series_uid: str) -> np.ndarray:
    """Stored values of one slice; read from disk for paths, never cached on a dataset."""
    try:
        return pixel_array(item.source)
    except Exception as exc:  # decoder errors come in many types; all mean "unusable"
        raise ImagingError(
            f"series {series_uid}: pixel data of SOP instance {item.label} can't be decoded: {exc}"
        ) from exc


def _ct_hu(item: _Slice, series_uid: str) -> np.ndarray:
    """HU of one slice as int32 when the rescale is integral (the LUT path), else float32.

    Padding pixels become −1024 HU, black in all three windows.
    """
    raw = _decode(item, series_uid)
    header = item.header
    padding = pixel_padding_mask(raw, header)
    slope = float(header.get("RescaleSlope", 1) or 1)
    intercept = float(header.get("RescaleIntercept", 0) or 0)
    hu: np.ndarray
    if (
        "ModalityLUTSequence" not in header
        and raw.dtype.kind in "iu"
        and slope.is_integer()
        and intercept.is_integer()
    ):
        hu = raw.astype(np.int32) * int(slope) + int(intercept)
    else:
        hu = np.asarray(apply_modality_lut(raw, header), dtype=np.float32)
    if padding is not None:
        hu[padding] = CT_WINDOWS[0][0]
    return hu


def _notebook_norm(values: np.ndarray, low: float, high: float) -> np.ndarray:
    """The notebook's per-channel arithmetic: clip, float32, −low, ÷(high−low), ×255, to uint8.

    The float → uint8 conversion truncates, as ``astype(np.uint8)`` does, so HU 0
    gives R = 127 and G = 98.
    """
    out = np.clip(values, low, high).astype(np.float32)
    out -= np.float32(low)
    out /= np.float32(high - low)
    out *= np.float32(255.0)
    return out.astype(np.uint8)


def _build_ct_lut() -> np.ndarray:
    """(2049, 3) uint8: row h + 1024 holds the RGB of integer HU h in [−1024, 1024].

    Every window lies inside [−1024, 1024], so clipping to that range first and
    indexing is exact for integer HU, and ~2× faster than the float math.
    """
    low, high = CT_WINDOWS[0]
    hu = np.arange(low, high + 1, dtype=np.int32)
    return np.stack([_notebook_norm(hu, lo, hi) for lo, hi in CT_WINDOWS], axis=-1)


_CT_LUT = _build_ct_lut()


def _ct_rgb(hu: np.ndarray) -> np.ndarray:
    """(rows, cols, 3) uint8 from HU: LUT for integer HU, notebook float math otherwise."""
    if hu.dtype.kind in "iu":
        # take(mode="clip") clamps the index to the table, which is exactly
        # clipping HU to [−1024, 1024], in one pass (~30% faster than clip + index).
        return _CT_LUT.take(hu - CT_WINDOWS[0][0], axis=0, mode="clip")
    return np.stack([_notebook_norm(hu, lo, hi) for lo, hi in CT_WINDOWS], axis=-1)


def _mr_images(sampled: list[_Slice], series_uid: str, notes: list[str]) -> list[Image.Image]:
    """One min–max over the whole sampled volume (padding excluded), grey in R = G = B."""
    rows, columns = int(sampled[0].header.Rows), int(sampled[0].header.Columns)
    # One float32 block filled slice by slice: no list of per-slice arrays alive.
    volume = np.empty((len(sampled), rows, columns), dtype=np.float32)
    for k, item in enumerate(sampled):
        raw = _decode(item, series_uid)
        padding = pixel_padding_mask(raw, item.header)
        volume[k] = apply_modality_lut(raw, item.header)
        if padding is not None:
            volume[k][padding] = np.nan
    if np.isnan(volume).all():
        low = high = 0.0
    else:
        low, high = float(np.nanmin(volume)), float(np.nanmax(volume))
    if high <= low:
        notes.append(f"constant volume (value {low:g}): all slices black")
        grey = np.zeros(volume.shape, dtype=np.uint8)
    else:
        volume -= np.float32(low)
        volume /= np.float32(high - low)
        volume *= np.float32(255.0)
        np.nan_to_num(volume, copy=False, nan=0.0)
        grey = volume.astype(np.uint8)
    del volume
    return [Image.fromarray(np.repeat(g[..., np.newaxis], 3, axis=-1)) for g in grey]


# --- small helpers -------------------------------------------------------------


def _label(source: Dataset | Path, header: Dataset) -> str:
    uid = header.get("SOPInstanceUID")
    if uid:
        return str(uid)
    return source.name if isinstance(source, Path) else "<no SOPInstanceUID>"


def _short_list(items: Sequence[str]) -> str:
    shown = ", ".join(items[:_MAX_UIDS_IN_NOTE])
    return shown + (
        f" (+{len(items) - _MAX_UIDS_IN_NOTE} more)" if len(items) > _MAX_UIDS_IN_NOTE else ""
    )


def _fmt_vector(values: np.ndarray) -> str:
    return "[" + ", ".join(f"{v:.3f}" for v in values) + "]"
