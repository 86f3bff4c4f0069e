"""Decoding the frames of a stack: stored values, one pass per multi-frame object."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np

from node.imaging.dicom_io import decode_each, decode_pixels
from node.imaging.stack_types import Frame


def decode_frames(frames: Sequence[Frame], series_uid: str) -> Iterator[np.ndarray]:
    """Stored values of each frame, in order; one pass per multi-frame source.

    Paths are read from disk per call and never cached on a dataset.
    """
    wanted: dict[int, list[int]] = {}
    for frame in frames:
        if frame.frame_index is not None:
            wanted.setdefault(id(frame.source), []).append(frame.frame_index)
    decoded: dict[tuple[int, int], np.ndarray] = {}
    for frame in frames:
        if frame.frame_index is None:
            yield decode_pixels(
                frame.source, f"series {series_uid}: pixel data of SOP instance {frame.label}"
            )
            continue
        key = (id(frame.source), frame.frame_index)
        if key not in decoded:
            indices = sorted(set(wanted.pop(id(frame.source), [frame.frame_index])))
            decoded.update(
                ((id(frame.source), i), a)
                for i, a in zip(indices, _decode_multi(frame, indices, series_uid), strict=True)
            )
        yield decoded.pop(key)


def _decode_multi(frame: Frame, indices: list[int], series_uid: str) -> list[np.ndarray]:
    what = (
        f"series {series_uid}: pixel data of {frame.label.split(' frame ')[0]} "
        f"(frames {indices[0] + 1}…{indices[-1] + 1})"
    )
    return list(decode_each(frame.source, indices, what))
