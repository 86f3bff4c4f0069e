"""node.imaging.wsi on a real pyramid from OrthancWSIDicomizer (``fixtures.wsi``).

The slide is 20X at its base, five levels, JPEG tiles of 512 px, the 20X and
10X levels split into concatenations. Which patches lie on tissue is checked
against the fixture's own drawing (``tissue_mask``), not against the detector.
"""

from __future__ import annotations

import copy
import math
import random
from collections import defaultdict
from io import BytesIO
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate, generate_frames
from pydicom.uid import VLWholeSlideMicroscopyImageStorage

from fixtures.wsi import (
    BACKGROUND_RGB,
    KNOWN_DCIODVFY_ERRORS,
    draw_slide,
    make_wsi_series,
    tissue_mask,
)
from node.imaging.errors import ImagingError
from node.imaging.wsi import MIN_TISSUE_FRACTION, PATCH_SIZE, WsiInput, wsi_to_patches
from tests.dicom_tools import dciodvfy_errors

# The drawing and the detector see the same outlines through JPEG and a
# downsampled mask, so a patch's drawn tissue fraction may sit a few points
# either side of the 25 % rule.
FRACTION_SLACK = 0.05


@pytest.fixture(scope="module")
def wsi_files(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return make_wsi_series(tmp_path_factory.mktemp("wsi"))


@pytest.fixture(scope="module")
def headers(wsi_files: list[Path]) -> list[Dataset]:
    return [pydicom.dcmread(path, stop_before_pixels=True) for path in wsi_files]


@pytest.fixture(scope="module")
def result(wsi_files: list[Path]) -> WsiInput:
    return wsi_to_patches(wsi_files)


def _levels(headers: list[Dataset]) -> list[tuple[int, int, float]]:
    """(rows, columns, spacing mm) of each level, finest first, from the headers alone."""
    levels = {}
    for ds in headers:
        spacing = ds.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0].PixelSpacing
        key = (int(ds.TotalPixelMatrixRows), int(ds.TotalPixelMatrixColumns))
        levels[key] = (float(spacing[0]) + float(spacing[1])) / 2
    return [(r, c, s) for (r, c), s in sorted(levels.items(), key=lambda kv: -kv[0][0])]


def _drawn_fraction(mask: np.ndarray, top: int, left: int) -> float:
    """Drawn tissue in the patch at (top, left), over the full patch area."""
    return float(mask[top : top + PATCH_SIZE, left : left + PATCH_SIZE].sum()) / PATCH_SIZE**2


def test_fixture_is_a_valid_wsi_pyramid(wsi_files: list[Path], headers: list[Dataset]) -> None:
    # Strict reading (conftest) of every instance, pixel data included.
    for path in wsi_files:
        ds = pydicom.dcmread(path)
        assert ds.SOPClassUID == VLWholeSlideMicroscopyImageStorage
        assert ds.file_meta.TransferSyntaxUID.is_compressed
    assert len({ds.SeriesInstanceUID for ds in headers}) == 1
    assert {ds.PatientID for ds in headers} == {"MGN-WSI-1"}
    levels = _levels(headers)
    assert [round(0.01 / s, 2) for _, _, s in levels] == [20.0, 10.0, 5.0, 2.5, 1.25]
    # The 10X level arrives as a concatenation, which the reader must reassemble.
    ten_x = [ds for ds in headers if int(ds.TotalPixelMatrixColumns) == levels[1][1]]
    assert len(ten_x) > 1 and len({ds.ConcatenationUID for ds in ten_x}) == 1

    path = wsi_files[headers.index(ten_x[0])]
    unexpected = [
        line
        for line in dciodvfy_errors(path)
        if not any(known in line for known in KNOWN_DCIODVFY_ERRORS)
    ]
    assert unexpected == []


def test_level_nearest_10x(result: WsiInput, headers: list[Dataset]) -> None:
    levels = _levels(headers)
    nearest = min(range(len(levels)), key=lambda i: abs(math.log(0.01 / levels[i][2] / 10)))
    assert result.level_index == nearest == 1
    assert result.magnification == pytest.approx(10.0, rel=1e-3)
    assert result.level_pixel_spacing_mm == pytest.approx(0.001, rel=1e-3)
    assert result.series_uid == headers[0].SeriesInstanceUID
    assert result.notes == []


def test_patches_are_896_rgb_in_spatial_order(result: WsiInput, headers: list[Dataset]) -> None:
    rows, columns, _ = _levels(headers)[result.level_index]
    assert len(result.patches) == len(result.positions) > 1
    for patch, (top, left) in zip(result.patches, result.positions, strict=True):
        assert patch.mode == "RGB" and patch.size == (PATCH_SIZE, PATCH_SIZE)
        assert top % PATCH_SIZE == 0 and left % PATCH_SIZE == 0
        assert 0 <= top < rows and 0 <= left < columns
    assert result.positions == sorted(result.positions)
    assert len(set(result.positions)) == len(result.positions)


def test_only_tissue_patches(result: WsiInput, headers: list[Dataset]) -> None:
    rows, columns, _ = _levels(headers)[result.level_index]
    _assert_tissue_patches(result, rows, columns)
    # And from the pixels: every patch is darker than empty glass.
    background = sum(BACKGROUND_RGB) / 3
    for patch, position in zip(result.patches, result.positions, strict=True):
        assert np.asarray(patch).mean() < background - 5, position


def _assert_tissue_patches(result: WsiInput, rows: int, columns: int) -> None:
    """Clearly-tissue grid patches are chosen, clearly-glass ones are not."""
    mask = tissue_mask(columns, rows)
    grid = [(t, c) for t in range(0, rows, PATCH_SIZE) for c in range(0, columns, PATCH_SIZE)]
    chosen = set(result.positions)
    for top, left in grid:
        drawn = _drawn_fraction(mask, top, left)
        if drawn >= MIN_TISSUE_FRACTION + FRACTION_SLACK:
            assert (top, left) in chosen, f"tissue patch at {(top, left)} ({drawn:.0%}) missed"
        if drawn < MIN_TISSUE_FRACTION - FRACTION_SLACK:
            assert (top, left) not in chosen, f"glass patch at {(top, left)} ({drawn:.0%}) kept"


def test_without_low_resolution_levels_the_mask_is_subsampled(
    wsi_files: list[Path], headers: list[Dataset]
) -> None:
    levels = _levels(headers)
    top_two = {columns for _, columns, _ in levels[:2]}  # 20X and 10X only
    files = [
        path
        for path, ds in zip(wsi_files, headers, strict=True)
        if int(ds.TotalPixelMatrixColumns) in top_two
    ]
    found = wsi_to_patches(files)
    assert found.level_index == 1
    assert any("no low-resolution level" in note for note in found.notes)
    _assert_tissue_patches(found, levels[1][0], levels[1][1])


def test_patch_pixels_match_the_drawn_slide(result: WsiInput) -> None:
    # The 10X level is the 20X drawing halved (Orthanc smooths, then JPEG): the
    # patches must show the drawing at their position, tile seams included. A
    # shift of 4 px drops the grey-level correlation to ~0.96; aligned it is ~0.998.
    drawing = draw_slide().reduce(2)
    for patch, (top, left) in zip(result.patches, result.positions, strict=True):
        expected = drawing.crop((left, top, left + PATCH_SIZE, top + PATCH_SIZE))
        difference = np.abs(np.asarray(patch, np.int16) - np.asarray(expected, np.int16))
        assert difference.mean() < 6, (top, left)
        correlation = np.corrcoef(_grey(patch), _grey(expected))[0, 1]
        assert correlation > 0.99, (top, left)


def _grey(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("L").reduce(2), dtype=np.float64).ravel()


def test_sampling_is_deterministic_and_keeps_order(result: WsiInput, wsi_files: list[Path]) -> None:
    first = wsi_to_patches(wsi_files, max_patches=3, seed=7)
    again = wsi_to_patches(wsi_files, max_patches=3, seed=7)
    assert len(first.patches) == 3
    assert first.positions == again.positions == sorted(first.positions)
    assert set(first.positions) <= set(result.positions)
    assert any("random sample of 3" in note for note in first.notes)
    for a, b in zip(first.patches, again.patches, strict=True):
        assert np.array_equal(np.asarray(a), np.asarray(b))
    others = {tuple(wsi_to_patches(wsi_files, max_patches=3, seed=s).positions) for s in (8, 9)}
    assert others - {tuple(first.positions)}, "the seed changes nothing"


def test_datasets_in_any_order_give_the_same_patches(
    result: WsiInput, wsi_files: list[Path]
) -> None:
    datasets = [pydicom.dcmread(path) for path in wsi_files]
    random.Random(3).shuffle(datasets)
    from_datasets = wsi_to_patches(datasets)
    assert from_datasets.positions == result.positions
    assert from_datasets.level_index == result.level_index
    for a, b in zip(from_datasets.patches, result.patches, strict=True):
        assert np.array_equal(np.asarray(a), np.asarray(b))
    # Headers read without pixels decode their tiles from the file they came from.
    from_headers = wsi_to_patches(
        [pydicom.dcmread(path, stop_before_pixels=True) for path in wsi_files]
    )
    assert from_headers.positions == result.positions


def _as_tiled_full(parts: list[Dataset]) -> Dataset:
    """One TILED_FULL instance from a concatenated, per-frame-positioned level."""
    parts = sorted(parts, key=lambda ds: int(ds.ConcatenationFrameOffsetNumber))
    tiles: dict[tuple[int, int], bytes] = {}
    for ds in parts:
        frames = generate_frames(ds.PixelData, number_of_frames=int(ds.NumberOfFrames))
        for item, frame in zip(ds.PerFrameFunctionalGroupsSequence, frames, strict=True):
            plane = item.PlanePositionSlideSequence[0]
            key = (
                int(plane.RowPositionInTotalImagePixelMatrix),
                int(plane.ColumnPositionInTotalImagePixelMatrix),
            )
            tiles[key] = frame
    out = copy.deepcopy(parts[0])
    for keyword in (
        "PerFrameFunctionalGroupsSequence",
        "ConcatenationUID",
        "InConcatenationNumber",
        "ConcatenationFrameOffsetNumber",
        "SOPInstanceUIDOfConcatenationSource",
    ):
        if keyword in out:
            delattr(out, keyword)
    out.DimensionOrganizationType = "TILED_FULL"
    out.PixelData = encapsulate([tiles[key] for key in sorted(tiles)])  # row-major
    out.NumberOfFrames = len(tiles)
    return out


def test_tiled_full_levels_read_the_same(result: WsiInput, wsi_files: list[Path]) -> None:
    by_level: dict[int, list[Dataset]] = defaultdict(list)
    for path in wsi_files:
        ds = pydicom.dcmread(path)
        by_level[int(ds.TotalPixelMatrixColumns)].append(ds)
    tiled_full = [_as_tiled_full(parts) for parts in by_level.values()]
    converted = wsi_to_patches(tiled_full)
    assert converted.positions == result.positions
    for a, b in zip(converted.patches, result.patches, strict=True):
        assert np.array_equal(np.asarray(a), np.asarray(b))


def test_non_wsi_series_raises_naming_it() -> None:
    found = get_testdata_file("CT_small.dcm", download=False)
    assert found is not None
    ct = pydicom.dcmread(str(found))
    with pytest.raises(ImagingError, match=str(ct.SeriesInstanceUID)):
        wsi_to_patches([ct])


def test_mixed_series_raise(wsi_files: list[Path]) -> None:
    found = get_testdata_file("CT_small.dcm", download=False)
    assert found is not None
    with pytest.raises(ImagingError, match="2 series"):
        wsi_to_patches([*wsi_files, Path(str(found))])


def test_slide_without_tissue_raises_naming_the_series(wsi_files: list[Path]) -> None:
    # Every level blanked to glass: no patch can qualify.
    datasets = []
    for path in wsi_files:
        ds = pydicom.dcmread(path)
        n = int(ds.NumberOfFrames)
        ds.PixelData = encapsulate([_white_jpeg(int(ds.Rows), int(ds.Columns))] * n)
        datasets.append(ds)
    with pytest.raises(ImagingError, match=f"series {datasets[0].SeriesInstanceUID}.*tissue"):
        wsi_to_patches(datasets)


def _white_jpeg(rows: int, columns: int) -> bytes:
    """A baseline JPEG tile of empty glass."""
    buffer = BytesIO()
    Image.new("RGB", (columns, rows), BACKGROUND_RGB).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()
