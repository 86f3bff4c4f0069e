"""node.imaging.dicom_io: the one DICOM read and pixel decode, failures naming the file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fixtures.series import source_path
from node.imaging.dicom_io import decode_each, decode_pixels, read_dataset
from node.imaging.errors import ImagingError


def test_read_dataset_names_the_file_that_is_not_dicom(tmp_path: Path) -> None:
    junk = tmp_path / "junk.dcm"
    junk.write_bytes(b"not dicom at all")
    with pytest.raises(ImagingError, match=r"file junk\.dcm: not readable as DICOM") as caught:
        read_dataset(junk)
    assert caught.value.__cause__ is not None
    with pytest.raises(ImagingError, match=r"file missing\.dcm"):
        read_dataset(tmp_path / "missing.dcm", header_only=True)


def test_read_dataset_header_only_and_deferred(tmp_path: Path) -> None:
    path = source_path("CT_small.dcm")
    assert "PixelData" not in read_dataset(path, header_only=True)
    deferred = read_dataset(path, defer_size=1024)
    assert "PixelData" in deferred
    full = read_dataset(path)
    assert np.array_equal(decode_pixels(deferred, "CT"), full.pixel_array)


def test_decode_names_what_failed(tmp_path: Path) -> None:
    ds = read_dataset(source_path("CT_small.dcm"))
    ds.PixelData = ds.PixelData[:100]  # truncated
    with pytest.raises(ImagingError, match="SOP instance 1.2.3: pixel data can't be decoded"):
        decode_pixels(ds, "SOP instance 1.2.3: pixel data")
    with pytest.raises(ImagingError, match=r"series S: frames 1…1 can't be decoded"):
        list(decode_each(ds, [0], "series S: frames 1…1"))


def test_decode_each_reads_the_asked_frames_from_a_file() -> None:
    path = source_path("emri_small.dcm")  # 10 frames
    whole = read_dataset(path).pixel_array
    frames = list(decode_each(path, [1, 7], "emri"))
    assert [f.shape for f in frames] == [whole.shape[1:]] * 2
    assert np.array_equal(frames[0], whole[1]) and np.array_equal(frames[1], whole[7])
