"""A slide's pyramid: its instances grouped into levels, every tile mapped, the level nearest 10X.

Headers only: nothing here decodes pixels (that is :mod:`.regions`).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.uid import VLWholeSlideMicroscopyImageStorage

from node.imaging.dicom_io import read_dataset
from node.imaging.errors import ImagingError

TARGET_MAGNIFICATION = 10.0
MM_PER_PIXEL_AT_10X = 0.001
"""The magnification convention: 10X ≈ 1.0 µm/px (so 40X ≈ 0.25 µm/px)."""
# A chosen level further than this (relative) from 10X is worth a note.
MAGNIFICATION_NOTE_TOLERANCE = 0.1
# Pixel spacing rows vs columns may differ by rounding (Orthanc: 0.0039971 vs
# 0.004 on an odd-sized level); beyond this it is worth a note.
ANISOTROPY_NOTE_TOLERANCE = 0.02
# ImageType value 3 of images that are not pyramid levels.
_NON_PYRAMID_FLAVOURS = frozenset({"LABEL", "OVERVIEW"})
_TILED_MATRIX_KEYWORDS = ("TotalPixelMatrixRows", "TotalPixelMatrixColumns", "Rows", "Columns")


@dataclass(frozen=True)
class Source:
    """One instance of a level: its header and where its frames are decoded from."""

    header: Dataset
    pixels: Dataset | Path  # a dataset holding PixelData, or the file to read frames from
    uid: str


@dataclass
class Level:
    rows: int  # TotalPixelMatrixRows
    columns: int  # TotalPixelMatrixColumns
    tile_rows: int
    tile_columns: int
    spacing_mm: float
    sources: list[Source] = field(default_factory=list)
    # (tile row, tile column) → (index into sources, frame index in that instance)
    tiles: dict[tuple[int, int], tuple[int, int]] = field(default_factory=dict)

    @property
    def magnification(self) -> float:
        return TARGET_MAGNIFICATION * MM_PER_PIXEL_AT_10X / self.spacing_mm

    @property
    def name(self) -> str:
        return f"{self.columns}×{self.rows}"


def read_sources(items: Sequence[Dataset | Path]) -> list[Source]:
    """Every instance's header; a path is read up to its pixel data, which stays on disk."""
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
        sources.append(Source(header=header, pixels=pixels, uid=uid))
    return sources


def series_uid_of(sources: Sequence[Source]) -> str:
    """The one SeriesInstanceUID of ``sources``; instances of several series are an error."""
    uids = sorted(
        {str(s.header.get("SeriesInstanceUID", "<no SeriesInstanceUID>")) for s in sources}
    )
    if len(uids) > 1:
        raise ImagingError(f"WSI: instances of {len(uids)} series given ({', '.join(uids)})")
    return uids[0]


def slide_images(sources: Sequence[Source], series_uid: str, notes: list[str]) -> list[Source]:
    """The VL Whole Slide Microscopy instances of ``sources``, in their order."""
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
    return slides


def build_levels(slides: Sequence[Source], series_uid: str, notes: list[str]) -> list[Level]:
    """Group instances into pyramid levels (finest first) and map their tiles."""
    groups: dict[tuple[int, int], list[Source]] = defaultdict(list)
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


def nearest_10x(levels: Sequence[Level], notes: list[str]) -> int:
    """Index of the level nearest 10X on a log scale (a tie goes to the finer level)."""
    chosen = min(
        range(len(levels)),
        key=lambda i: (abs(math.log(levels[i].magnification / TARGET_MAGNIFICATION)), i),
    )
    level = levels[chosen]
    if abs(level.magnification / TARGET_MAGNIFICATION - 1) > MAGNIFICATION_NOTE_TOLERANCE:
        notes.append(
            f"no 10X level: used level {chosen} at {level.magnification:.2f}X "
            f"({level.spacing_mm * 1000:.3f} µm/px), not resampled"
        )
    return chosen


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


def _make_level(
    rows: int, columns: int, members: list[Source], series_uid: str, notes: list[str]
) -> Level:
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
    level = Level(rows, columns, tile_rows, tile_columns, spacing_mm, sources=members)
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


def _frame_positions(source: Source, level: Level, series_uid: str) -> Iterable[tuple[int, int]]:
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


def _fill_missing_spacing(levels: list[Level], series_uid: str, notes: list[str]) -> None:
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
