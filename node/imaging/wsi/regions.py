"""Pixels of some regions of a pyramid level, decoding only the tiles under them, each once."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence

import numpy as np
from pydicom.dataset import Dataset

from node.imaging.dicom_io import decode_each
from node.imaging.errors import ImagingError
from node.imaging.wsi.pyramid import Level, Source

# Empty glass in brightfield is white: a tile missing from a sparse level (never
# scanned) reads as it. Patches never reach past the matrix, so nothing else does.
GLASS_RGB = (255, 255, 255)

Region = tuple[int, int, int, int]  # (top, left, height, width) in level pixels


def read_regions(level: Level, regions: Sequence[Region], *, step: int = 1) -> list[np.ndarray]:
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


def _decode_frames(source: Source, indices: list[int]) -> Iterable[np.ndarray]:
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
