"""VL Whole Slide Microscopy series → the ≤ 125 tissue patches MedGemma 1.5 was trained on.

MedGemma's pathology input is a *set* of non-overlapping 896×896 RGB patches cut
at the pyramid level nearest 10X, from tissue only, at most 125 of them. This
module cuts them as the official MedGemma 1.5 pathology notebook does with ez-wsi
(``DicomPatchGenerator(patch_size=896, stride_size=896)``, then
``random.sample(patches, k=min(125, n))``, sent in the sampled order). The path:

1. Read headers only (paths): a 40X level is gigabytes of pixels.
2. Group instances into pyramid levels by total pixel matrix size; the parts of
   a concatenation (Orthanc splits levels over several instances) join one
   level. LABEL and OVERVIEW images are not part of the pyramid and are dropped.
3. Map every tile to (instance, frame): from the per-frame Plane Position (Slide)
   when present (Orthanc's output, TILED_SPARSE), else by the TILED_FULL order
   (row-major tiles, frame offsets continuing across a concatenation).
4. Choose the level nearest 10X. Magnification convention: 10X ≈ 1.0 µm/px,
   i.e. ``magnification = 10 × 0.001 mm / pixel spacing (mm)`` (0.25 µm/px is
   40X, 0.5 µm/px 20X). "Nearest" is on a log scale, because pyramid levels
   are powers of two apart; a tie goes to the finer level.
5. Find tissue on a low-resolution level (the smallest one on which a patch
   still spans ``MASK_PIXELS_PER_PATCH`` pixels): stained tissue is coloured,
   glass is grey-white, so an Otsu threshold on saturation (max − min of RGB),
   bounded below and above, separates them.
6. Lay a grid of full 896×896 patches over the chosen level from its top-left
   corner, as ez-wsi does: ``floor(columns / 896) × floor(rows / 896)`` candidates,
   row-major; the strip past the last full patch on the right and bottom is never
   sent (nothing is padded). Keep the candidates with ≥ ``MIN_TISSUE_FRACTION``
   tissue. A level smaller than 896 px in either dimension, or one where no
   full patch is on tissue, is an error.
7. ``random.Random(seed).sample(on_tissue, k=min(max_patches, n))`` over the n
   kept candidates in row-major order, always (for n ≤ 125 that is a
   permutation), and send the patches in that sampled order, as the notebook
   does. The seed defaults to one derived from the SeriesInstanceUID
   (:func:`series_seed`), so a rerun sends the same patches in the same order.
   Only the tiles those patches touch are decoded, each once.

The one deliberate difference from the notebook is step 5: ez-wsi's tissue mask
(mean grey level at 1.25X between 1/255 and 0.8 of white, per stride) is not
available here, so tissue is the Otsu-on-saturation mask above. Everything else
(grid, full patches only, sample size, sampled order) is the notebook's.

The patches are not resampled to exactly 10X: MedGemma's pipeline takes the
nearest level as it is, and resampling would change texture scale.
"""

from __future__ import annotations

import hashlib
import logging
import math
import random
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.uid import VLWholeSlideMicroscopyImageStorage

from node.imaging.dicom_io import decode_each, read_dataset
from node.imaging.errors import ImagingError
from node.inference.budgets import IMAGE_SIZE, MAX_WSI_PATCHES

logger = logging.getLogger(__name__)

# MedGemma's image side (patches are cut at this size and never resized) and its patch
# budget for one slide.
PATCH_SIZE = IMAGE_SIZE
MAX_PATCHES = MAX_WSI_PATCHES
TARGET_MAGNIFICATION = 10.0
MM_PER_PIXEL_AT_10X = 0.001
"""The magnification convention: 10X ≈ 1.0 µm/px (so 40X ≈ 0.25 µm/px)."""

MIN_TISSUE_FRACTION = 0.25
"""A patch is kept when at least this fraction of its area is tissue."""
# The tissue mask is read from the smallest level on which one patch still spans
# this many pixels: fine enough for a 25 % area estimate, small enough to read whole.
MASK_PIXELS_PER_PATCH = 32
# A chosen level further than this (relative) from 10X is worth a note.
MAGNIFICATION_NOTE_TOLERANCE = 0.1
# Saturation (max − min of R, G, B) thresholds. Otsu picks the split between
# glass and stain; the floor keeps an almost empty slide's noise (glass is a
# few levels off grey) from becoming "tissue", the ceiling keeps a slide that is
# nearly all tissue from being split between pale and dark stain instead.
SATURATION_FLOOR = 15
SATURATION_CEILING = 60
# Near-black pixels are slide edges, pen marks or scanner borders, not tissue.
DARK_LIMIT = 30
# Empty glass in brightfield is white: a tile missing from a sparse level (never
# scanned) reads as it. Patches never reach past the matrix, so nothing else does.
GLASS_RGB = (255, 255, 255)
# Pixel spacing rows vs columns may differ by rounding (Orthanc: 0.0039971 vs
# 0.004 on an odd-sized level); beyond this it is worth a note.
ANISOTROPY_NOTE_TOLERANCE = 0.02
# ImageType value 3 of images that are not pyramid levels.
_NON_PYRAMID_FLAVOURS = frozenset({"LABEL", "OVERVIEW"})
_TILED_MATRIX_KEYWORDS = ("TotalPixelMatrixRows", "TotalPixelMatrixColumns", "Rows", "Columns")


@dataclass(frozen=True)
class WsiInput:
    """The model input for one whole-slide series, plus how it was derived."""

    patches: list[Image.Image]  # RGB 896×896, in the sampled order: the order sent
    positions: list[tuple[int, int]]  # (row, col) pixel offset of each patch, same order
    level_index: int  # 0 = the finest level of the pyramid
    level_pixel_spacing_mm: float
    magnification: float  # 10 × 0.001 mm / level_pixel_spacing_mm
    series_uid: str
    seed: int  # of the random.Random that sampled (and ordered) the patches
    notes: list[str]  # what was dropped, sampled or irregular, and why


@dataclass(frozen=True)
class _Source:
    """One instance of a level: its header and where its frames are decoded from."""

    header: Dataset
    pixels: Dataset | Path  # a dataset holding PixelData, or the file to read frames from
    uid: str


@dataclass
class _Level:
    rows: int  # TotalPixelMatrixRows
    columns: int  # TotalPixelMatrixColumns
    tile_rows: int
    tile_columns: int
    spacing_mm: float
    sources: list[_Source] = field(default_factory=list)
    # (tile row, tile column) → (index into sources, frame index in that instance)
    tiles: dict[tuple[int, int], tuple[int, int]] = field(default_factory=dict)

    @property
    def magnification(self) -> float:
        return TARGET_MAGNIFICATION * MM_PER_PIXEL_AT_10X / self.spacing_mm


def wsi_to_patches(
    datasets_or_paths: Sequence[Dataset | Path],
    *,
    max_patches: int = MAX_PATCHES,
    seed: int | None = None,
) -> WsiInput:
    """Cut MedGemma's tissue patches from one VL Whole Slide Microscopy series.

    Parameters
    ----------
    datasets_or_paths
        The series' instances (all pyramid levels, any order), as datasets or
        file paths. Paths are preferred: headers are read up front and only the
        tiles under chosen patches (and one low-resolution level) are decoded.
    max_patches
        The patch budget (125 for MedGemma 1.5).
    seed
        Seed of the ``random.Random`` that samples the tissue patches and so
        decides the order they are sent in; ``None`` (the default) derives it
        from the SeriesInstanceUID (:func:`series_seed`). The same seed gives the
        same patches in the same order.

    Raises
    ------
    ImagingError
        No WSI instance, instances of several series, a level without pixel
        spacing or tile positions, undecodable tiles, a chosen level smaller than
        one patch, or no full patch on tissue. The message names the
        SeriesInstanceUID.
    """
    if max_patches < 1:
        raise ValueError(f"max_patches must be ≥ 1, got {max_patches}")
    if not datasets_or_paths:
        raise ImagingError("WSI: no instances given")
    notes: list[str] = []
    sources = _read_sources(datasets_or_paths)
    series_uid = _series_uid(sources)
    slides = [
        s for s in sources if s.header.get("SOPClassUID") == VLWholeSlideMicroscopyImageStorage
    ]
    if not slides:
        classes = sorted({str(s.header.get("SOPClassUID", "?")) for s in sources})
        raise ImagingError(
            f"series {series_uid}: no VL Whole Slide Microscopy instances (SOP classes: "
            f"{', '.join(classes)})"
        )
    if len(slides) < len(sources):
        notes.append(f"{len(sources) - len(slides)} non-WSI instance(s) in the series ignored")

    levels = _build_levels(slides, series_uid, notes)
    chosen_index = min(
        range(len(levels)),
        key=lambda i: (abs(math.log(levels[i].magnification / TARGET_MAGNIFICATION)), i),
    )
    level = levels[chosen_index]
    if abs(level.magnification / TARGET_MAGNIFICATION - 1) > MAGNIFICATION_NOTE_TOLERANCE:
        notes.append(
            f"no 10X level: used level {chosen_index} at {level.magnification:.2f}X "
            f"({level.spacing_mm * 1000:.3f} µm/px), not resampled"
        )
    level_name = f"level {chosen_index} ({level.columns}×{level.rows} px)"
    candidates = _grid(level.rows, level.columns)
    if not candidates:
        raise ImagingError(
            f"series {series_uid}: {level_name} is smaller than one {PATCH_SIZE}×{PATCH_SIZE} "
            f"patch (0 candidates); patches are never padded"
        )

    mask_level = _mask_level(levels, level)
    # Without a low-resolution level the mask level is big (the chosen level
    # itself at worst): keep every step-th pixel so the mask stays thumbnail-sized,
    # with a patch still spanning ≥ 2 × MASK_PIXELS_PER_PATCH samples.
    patch_on_mask = PATCH_SIZE * mask_level.columns / level.columns
    step = max(1, int(patch_on_mask // MASK_PIXELS_PER_PATCH // 2))
    if step > 1:
        notes.append(
            f"no low-resolution level: tissue found on level {levels.index(mask_level)}, "
            f"every {step}th pixel"
        )
    try:
        region = (0, 0, mask_level.rows, mask_level.columns)
        thumbnail = _read_regions(mask_level, [region], step=step)[0]
    except ImagingError as error:
        raise ImagingError(f"series {series_uid}: {error}") from error
    tissue = tissue_mask(thumbnail)
    fractions = _tissue_fractions(tissue, candidates, level)
    on_tissue = [
        pos for pos, frac in zip(candidates, fractions, strict=True) if frac >= MIN_TISSUE_FRACTION
    ]
    if not on_tissue:
        raise ImagingError(
            f"series {series_uid}: none of the {len(candidates)} full {PATCH_SIZE}×{PATCH_SIZE} "
            f"patch candidates at {level_name} has ≥ {MIN_TISSUE_FRACTION:.0%} tissue"
        )

    # The notebook's random.sample(patches, k=min(125, n)), in its order.
    if seed is None:
        seed = series_seed(series_uid)
    sent = random.Random(seed).sample(on_tissue, k=min(max_patches, len(on_tissue)))
    if len(sent) < len(on_tissue):
        notes.append(
            f"{len(on_tissue)} tissue patches, random sample of {len(sent)} sent in sampled "
            f"order (seed {seed})"
        )

    try:
        arrays = _read_regions(level, [(r, c, PATCH_SIZE, PATCH_SIZE) for r, c in sent])
    except ImagingError as error:
        raise ImagingError(f"series {series_uid}: {error}") from error
    logger.info(
        "WSI series %s: level %d (%.2fX), %d/%d full patches on tissue, %d sent (seed %d)",
        series_uid,
        chosen_index,
        level.magnification,
        len(on_tissue),
        len(candidates),
        len(sent),
        seed,
    )
    return WsiInput(
        patches=[Image.fromarray(a, "RGB") for a in arrays],
        positions=sent,
        level_index=chosen_index,
        level_pixel_spacing_mm=level.spacing_mm,
        magnification=level.magnification,
        series_uid=series_uid,
        seed=seed,
        notes=notes,
    )


def series_seed(series_uid: str) -> int:
    """The default sampling seed of a series: the first 8 bytes of SHA-256 of its UID.

    ``int.from_bytes(sha256(series_uid as UTF-8).digest()[:8], "big")``: stable
    across processes and Python versions (unlike ``hash``), so a rerun on the same
    series sends the same patches in the same order.
    """
    return int.from_bytes(hashlib.sha256(series_uid.encode()).digest()[:8], "big")


def tissue_mask(rgb: np.ndarray) -> np.ndarray:
    """Boolean tissue mask of an RGB uint8 image (stained = saturated, glass = grey).

    Otsu's threshold on saturation, bounded to
    [``SATURATION_FLOOR``, ``SATURATION_CEILING``]; near-black pixels are not tissue.
    """
    channels = rgb.astype(np.int16)
    saturation = (channels.max(axis=2) - channels.min(axis=2)).astype(np.uint8)
    threshold = min(max(_otsu(saturation), SATURATION_FLOOR), SATURATION_CEILING)
    return (saturation >= threshold) & (channels.mean(axis=2) > DARK_LIMIT)


def _otsu(values: np.ndarray) -> int:
    """Otsu's threshold of uint8 ``values``: the first level of the upper class."""
    histogram = np.bincount(values.ravel(), minlength=256).astype(np.float64)
    total = histogram.sum()
    levels = np.arange(256, dtype=np.float64)
    weight_low = np.cumsum(histogram)
    sum_low = np.cumsum(histogram * levels)
    weight_high = total - weight_low
    with np.errstate(divide="ignore", invalid="ignore"):
        mean_low = sum_low / weight_low
        mean_high = (sum_low[-1] - sum_low) / weight_high
        between = weight_low * weight_high * (mean_low - mean_high) ** 2
    between = np.nan_to_num(between)
    return int(np.argmax(between)) + 1


def _read_sources(items: Sequence[Dataset | Path]) -> list[_Source]:
    sources = []
    for item in items:
        if isinstance(item, Dataset):
            header = item
            pixels: Dataset | Path = item
            if "PixelData" not in item:
                # A header read with stop_before_pixels still knows its file.
                filename = getattr(item, "filename", None)
                if isinstance(filename, str) and Path(filename).is_file():
                    pixels = Path(filename)
        else:
            path = Path(item)
            header = read_dataset(path, header_only=True)
            pixels = path
        uid = str(header.get("SOPInstanceUID", getattr(pixels, "name", "<no SOPInstanceUID>")))
        sources.append(_Source(header=header, pixels=pixels, uid=uid))
    return sources


def _series_uid(sources: Sequence[_Source]) -> str:
    uids = sorted(
        {str(s.header.get("SeriesInstanceUID", "<no SeriesInstanceUID>")) for s in sources}
    )
    if len(uids) > 1:
        raise ImagingError(f"WSI: instances of {len(uids)} series given ({', '.join(uids)})")
    return uids[0]


def _spacing_mm(header: Dataset) -> tuple[float, float] | None:
    """(row, column) PixelSpacing from the shared, else the first per-frame, functional group."""
    for keyword in ("SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence"):
        groups = header.get(keyword)
        if not groups:
            continue
        measures = groups[0].get("PixelMeasuresSequence")
        if measures and "PixelSpacing" in measures[0]:
            row, column = (float(v) for v in measures[0].PixelSpacing)
            return row, column
    return None


def _build_levels(slides: Sequence[_Source], series_uid: str, notes: list[str]) -> list[_Level]:
    """Group instances into pyramid levels (finest first) and map their tiles."""
    groups: dict[tuple[int, int], list[_Source]] = defaultdict(list)
    dropped: list[str] = []
    for source in slides:
        header = source.header
        value = header.get("ImageType")
        image_type = [str(v).upper() for v in value] if isinstance(value, MultiValue) else []
        if len(image_type) > 2 and image_type[2] in _NON_PYRAMID_FLAVOURS:
            dropped.append(image_type[2])
            continue
        missing = [k for k in _TILED_MATRIX_KEYWORDS if header.get(k) in (None, "")]
        if missing:
            raise ImagingError(
                f"series {series_uid}: instance {source.uid} lacks {', '.join(missing)}"
            )
        groups[(int(header.TotalPixelMatrixRows), int(header.TotalPixelMatrixColumns))].append(
            source
        )
    if dropped:
        notes.append(f"non-pyramid images ignored: {', '.join(sorted(dropped))}")
    if not groups:
        raise ImagingError(f"series {series_uid}: no pyramid level (only label/overview images)")

    levels = []
    for (rows, columns), members in sorted(groups.items(), key=lambda kv: -kv[0][0] * kv[0][1]):
        level = _make_level(rows, columns, members, series_uid, notes)
        levels.append(level)
    _fill_missing_spacing(levels, series_uid, notes)
    return levels


def _make_level(
    rows: int, columns: int, members: list[_Source], series_uid: str, notes: list[str]
) -> _Level:
    first = members[0].header
    tile_rows, tile_columns = int(first.Rows), int(first.Columns)
    for member in members[1:]:
        if (int(member.header.Rows), int(member.header.Columns)) != (tile_rows, tile_columns):
            raise ImagingError(
                f"series {series_uid}: level {columns}×{rows} mixes tile sizes "
                f"({member.uid} has {member.header.Columns}×{member.header.Rows})"
            )
    spacing = next((s for s in map(_spacing_mm, (m.header for m in members)) if s), None)
    spacing_mm = 0.0
    if spacing is not None:
        spacing_mm = (spacing[0] + spacing[1]) / 2
        if abs(spacing[0] - spacing[1]) > ANISOTROPY_NOTE_TOLERANCE * spacing_mm:
            notes.append(
                f"level {columns}×{rows}: non-square pixels {spacing[0]}×{spacing[1]} mm, mean used"
            )
    # Concatenation parts in frame order, so TILED_FULL frame numbers continue.
    members = sorted(members, key=lambda m: int(m.header.get("ConcatenationFrameOffsetNumber", 0)))
    level = _Level(rows, columns, tile_rows, tile_columns, spacing_mm, sources=members)
    duplicates = 0
    for index, member in enumerate(members):
        for frame, (top, left) in enumerate(_frame_positions(member, level, series_uid)):
            if top % tile_rows or left % tile_columns:
                raise ImagingError(
                    f"series {series_uid}: instance {member.uid} frame {frame + 1} at "
                    f"({top}, {left}) is off the {tile_columns}×{tile_rows} tile grid"
                )
            key = (top // tile_rows, left // tile_columns)
            if key in level.tiles:
                duplicates += 1  # another focal plane or optical path: keep the first
                continue
            level.tiles[key] = (index, frame)
    if duplicates:
        notes.append(
            f"level {columns}×{rows}: {duplicates} frame(s) repeat a tile position "
            f"(extra focal planes or optical paths); the first of each was used"
        )
    return level


def _frame_positions(source: _Source, level: _Level, series_uid: str) -> Iterable[tuple[int, int]]:
    """(top, left) 0-based pixel offset of each frame of ``source`` in the total matrix."""
    header = source.header
    n_frames = int(header.get("NumberOfFrames", 1))
    per_frame = header.get("PerFrameFunctionalGroupsSequence")
    organisation = str(header.get("DimensionOrganizationType", "")).upper()
    if per_frame and organisation != "TILED_FULL":
        if len(per_frame) != n_frames:
            raise ImagingError(
                f"series {series_uid}: instance {source.uid} has {len(per_frame)} per-frame "
                f"items for {n_frames} frames"
            )
        positions = []
        for frame, item in enumerate(per_frame):
            plane = item.get("PlanePositionSlideSequence")
            if not plane:
                raise ImagingError(
                    f"series {series_uid}: instance {source.uid} frame {frame + 1} has no "
                    f"Plane Position (Slide)"
                )
            positions.append(
                (
                    int(plane[0].RowPositionInTotalImagePixelMatrix) - 1,
                    int(plane[0].ColumnPositionInTotalImagePixelMatrix) - 1,
                )
            )
        return positions
    # TILED_FULL: row-major tiles, then further focal planes / optical paths,
    # numbered across the whole concatenation.
    across = math.ceil(level.columns / level.tile_columns)
    per_plane = across * math.ceil(level.rows / level.tile_rows)
    offset = int(header.get("ConcatenationFrameOffsetNumber", 0))
    return [
        (
            ((offset + frame) % per_plane) // across * level.tile_rows,
            ((offset + frame) % per_plane) % across * level.tile_columns,
        )
        for frame in range(n_frames)
    ]


def _fill_missing_spacing(levels: list[_Level], series_uid: str, notes: list[str]) -> None:
    """Derive a level's spacing from another level's when its own header has none."""
    reference = next((level for level in levels if level.spacing_mm > 0), None)
    if reference is None:
        raise ImagingError(f"series {series_uid}: no level has a PixelSpacing")
    for level in levels:
        if level.spacing_mm <= 0:
            level.spacing_mm = reference.spacing_mm * reference.columns / level.columns
            notes.append(
                f"level {level.columns}×{level.rows}: no PixelSpacing, derived from the "
                f"{reference.columns}×{reference.rows} level"
            )


def _mask_level(levels: Sequence[_Level], chosen: _Level) -> _Level:
    """The smallest level on which a patch of ``chosen`` spans ≥ MASK_PIXELS_PER_PATCH px."""
    usable = [
        level
        for level in levels
        if PATCH_SIZE * level.columns / chosen.columns >= MASK_PIXELS_PER_PATCH
        and PATCH_SIZE * level.rows / chosen.rows >= MASK_PIXELS_PER_PATCH
    ]
    return min(usable, key=lambda level: level.rows * level.columns)


def _grid(rows: int, columns: int) -> list[tuple[int, int]]:
    """Top-left corners of the non-overlapping *full* patches inside the matrix, row-major.

    ez-wsi's grid (stride = patch size): ``floor(rows / 896) × floor(columns / 896)``
    patches from the top-left corner; none if the matrix is smaller than one patch.
    """
    return [
        (top, left)
        for top in range(0, rows - PATCH_SIZE + 1, PATCH_SIZE)
        for left in range(0, columns - PATCH_SIZE + 1, PATCH_SIZE)
    ]


def _tissue_fractions(
    tissue: np.ndarray, corners: Sequence[tuple[int, int]], level: _Level
) -> list[float]:
    """Fraction of each patch's area that is tissue (patches lie inside the matrix)."""
    scale_rows = tissue.shape[0] / level.rows
    scale_columns = tissue.shape[1] / level.columns
    area = PATCH_SIZE * scale_rows * PATCH_SIZE * scale_columns
    fractions = []
    for top, left in corners:
        r0, r1 = round(top * scale_rows), round((top + PATCH_SIZE) * scale_rows)
        c0, c1 = round(left * scale_columns), round((left + PATCH_SIZE) * scale_columns)
        fractions.append(float(tissue[r0:r1, c0:c1].sum()) / area)
    return fractions


def _read_regions(
    level: _Level, regions: Sequence[tuple[int, int, int, int]], *, step: int = 1
) -> list[np.ndarray]:
    """Decode (top, left, height, width) regions of ``level`` as RGB uint8 arrays.

    Only tiles under some region are decoded, each once, one pass per instance; a
    tile missing from a sparse level reads as glass-white.
    ``step`` > 1 keeps every step-th row and column (a cheap thumbnail).
    """
    outputs = [
        np.full((-(-h // step), -(-w // step), 3), GLASS_RGB, dtype=np.uint8)
        for _, _, h, w in regions
    ]
    wanted: dict[int, dict[int, tuple[int, int]]] = defaultdict(dict)
    for top, left, height, width in regions:
        for tile_row in range(top // level.tile_rows, -(-(top + height) // level.tile_rows)):
            for tile_column in range(
                left // level.tile_columns, -(-(left + width) // level.tile_columns)
            ):
                found = level.tiles.get((tile_row, tile_column))
                if found is not None:
                    wanted[found[0]][found[1]] = (tile_row, tile_column)
    for source_index, frames in sorted(wanted.items()):
        source = level.sources[source_index]
        indices = sorted(frames)
        for frame, tile in zip(indices, _decode_frames(source, indices), strict=True):
            tile_top = frames[frame][0] * level.tile_rows
            tile_left = frames[frame][1] * level.tile_columns
            # Edge tiles are padded past the matrix with whatever the scanner
            # chose; only the part inside the matrix is image.
            inside = tile[: level.rows - tile_top, : level.columns - tile_left]
            for (top, left, _, _), out in zip(regions, outputs, strict=True):
                _paste(out, top, left, inside, tile_top, tile_left, step)
    return outputs


def _decode_frames(source: _Source, indices: list[int]) -> Iterable[np.ndarray]:
    """RGB uint8 frames ``indices`` of ``source`` (pydicom converts YBR to RGB)."""
    header = source.header
    if int(header.get("BitsAllocated", 8)) != 8:
        raise ImagingError(
            f"instance {source.uid}: {header.get('BitsAllocated')}-bit WSI is not supported"
        )
    if isinstance(source.pixels, Dataset) and "PixelData" not in source.pixels:
        raise ImagingError(f"instance {source.uid}: no pixel data and no file to read it from")
    for frame in decode_each(source.pixels, indices, f"instance {source.uid}: tiles"):
        if frame.ndim == 2:  # monochrome (e.g. fluorescence): grey in R = G = B
            frame = np.repeat(frame[..., None], 3, axis=2)
        yield frame.astype(np.uint8, copy=False)


def _paste(
    out: np.ndarray,
    top: int,
    left: int,
    tile: np.ndarray,
    tile_top: int,
    tile_left: int,
    step: int,
) -> None:
    """Copy a tile at (tile_top, tile_left) into ``out``, whose pixel (i, j) is level
    pixel (top + i·step, left + j·step)."""
    rows = _overlap(top, out.shape[0], tile_top, tile.shape[0], step)
    columns = _overlap(left, out.shape[1], tile_left, tile.shape[1], step)
    if rows is None or columns is None:
        return
    (out_rows, tile_rows), (out_columns, tile_columns) = rows, columns
    out[out_rows, out_columns] = tile[tile_rows, tile_columns]


def _overlap(
    start: int, length: int, tile_start: int, tile_length: int, step: int
) -> tuple[slice, slice] | None:
    """Matching (output, tile) slices along one axis, or None when they don't meet.

    The output samples level coordinates ``start + k·step`` for ``k < length``.
    """
    first = max(start, tile_start)
    first += (start - first) % step  # next sampled coordinate at or after ``first``
    end = min(start + length * step, tile_start + tile_length)
    if first >= end:
        return None
    count = len(range(first, end, step))
    k = (first - start) // step
    t = first - tile_start
    return slice(k, k + count), slice(t, t + (count - 1) * step + 1, step)
