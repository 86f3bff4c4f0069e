"""Reading DICOM files and decoding their pixel data, with one translation of failures.

pydicom reports a damaged file or an undecodable frame through many exception types
(``InvalidDicomError``, ``EOFError`` and ``struct.error`` on truncation, ``ValueError``
on a bad value, ``OSError``, and whatever a decoder plugin raises). To the node they all
mean one thing, "this input is unusable, and reading it again won't help", so each
becomes an :class:`~node.imaging.errors.ImagingError` naming the file or the instance,
with the cause chained.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.pixels.utils import iter_pixels, pixel_array

from node.imaging.errors import ImagingError

__all__ = ["decode_each", "decode_pixels", "read_dataset"]


def read_dataset(
    path: Path | str, *, header_only: bool = False, defer_size: int | None = None
) -> Dataset:
    """The data set in ``path``; ``header_only`` stops before the pixel data, ``defer_size``
    leaves larger elements on disk (they still exist, so "has pixel data" can be asked).

    Raises
    ------
    ImagingError
        ``file <name>: not readable as DICOM: <cause>``.
    """
    path = Path(path)
    try:
        return pydicom.dcmread(path, stop_before_pixels=header_only, defer_size=defer_size)
    except Exception as exc:  # any parse failure: see the module docstring
        raise ImagingError(f"file {path.name}: not readable as DICOM: {exc}") from exc


def decode_pixels(source: Dataset | Path, what: str, *, index: int | None = None) -> np.ndarray:
    """The stored values of ``source`` (of frame ``index`` only, when given).

    ``pixel_array()`` rather than ``ds.pixel_array``: the latter caches the decoded array
    on the data set, which would keep every decoded image alive as long as its header.

    Raises
    ------
    ImagingError
        ``<what> can't be decoded: <cause>``; ``what`` names the instance (and frame).
    """
    try:
        return pixel_array(source, index=index)
    except Exception as exc:  # decoders raise many types; all mean "can't decode"
        raise ImagingError(f"{what} can't be decoded: {exc}") from exc


def decode_each(source: Dataset | Path, indices: Sequence[int], what: str) -> Iterator[np.ndarray]:
    """The stored values of frames ``indices`` of ``source``, one at a time, in one pass.

    Raises
    ------
    ImagingError
        As :func:`decode_pixels`, when a frame is reached that can't be decoded.
    """
    try:
        yield from iter_pixels(source, indices=list(indices))
    except Exception as exc:
        raise ImagingError(f"{what} can't be decoded: {exc}") from exc
