"""node.imaging.wsi on a real pyramid from OrthancWSIDicomizer (``fixtures.wsi``).

The slide is 20X at its base, five levels, JPEG tiles of 512 px, the 20X and
10X levels split into concatenations. Which patches lie on tissue is checked
against the fixture's own drawing (``tissue_mask``), not against the detector.

The patch recipe itself (full 896 px patches only, the notebook's
``random.sample(patches, k=min(125, n))`` in sampled order, the seed derived from
the SeriesInstanceUID) is checked on ``make_grid_slide`` slides, whose candidate
patches the tests lay out and list by hand.
"""

from __future__ import annotations

import copy
import hashlib
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
    GRID_EDGE_PADDING_RGB,
    KNOWN_DCIODVFY_ERRORS,
    STROMA_RGB,
    draw_slide,
    make_grid_slide,
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


def _full_grid(rows: int, columns: int) -> list[tuple[int, int]]:
    """Top-left corners of the full 896 px patches inside a level, row-major (by hand)."""
    return [
        (top, left)
        for top in range(0, rows - 896 + 1, 896)
        for left in range(0, columns - 896 + 1, 896)
    ]


def _uid_seed(series_uid: str) -> int:
    """The default seed as documented: the first 8 bytes of SHA-256 of the UID, big-endian."""
    return int.from_bytes(hashlib.sha256(series_uid.encode("ascii")).digest()[:8], "big")


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


def test_level_instances_are_the_chosen_levels_in_the_given_order(
    result: WsiInput, headers: list[Dataset]
) -> None:
    rows, columns, _ = _levels(headers)[result.level_index]
    expected = [
        str(ds.SOPInstanceUID)
        for ds in headers
        if (int(ds.TotalPixelMatrixRows), int(ds.TotalPixelMatrixColumns)) == (rows, columns)
    ]
    assert len(expected) > 1  # the 10X level is a concatenation
    assert [str(ds.SOPInstanceUID) for ds in result.level_instances] == expected
    # Reversed input, reversed evidence: the order given, not the concatenation's.
    reversed_result = wsi_to_patches(list(reversed([Path(ds.filename) for ds in headers])))
    assert [str(ds.SOPInstanceUID) for ds in reversed_result.level_instances] == expected[::-1]


def test_patches_are_full_896_rgb_in_sampled_order(
    result: WsiInput, headers: list[Dataset]
) -> None:
    rows, columns, _ = _levels(headers)[result.level_index]
    # 3700 × 2750 at 10X: the last 116 columns and 62 rows are no patch's.
    assert (rows % 896, columns % 896) == (62, 116)
    assert len(result.patches) == len(result.positions) > 1
    for patch, (top, left) in zip(result.patches, result.positions, strict=True):
        assert patch.mode == "RGB" and patch.size == (PATCH_SIZE, PATCH_SIZE)
        assert top % 896 == 0 and left % 896 == 0
        assert 0 <= top and top + 896 <= rows and 0 <= left and left + 896 <= columns
    assert len(set(result.positions)) == len(result.positions)
    # Fewer than 125 on tissue: all are sent, permuted by the notebook's sample.
    # Sorted (top, left) pairs are the row-major candidate list it sampled from.
    seed = _uid_seed(str(headers[0].SeriesInstanceUID))
    assert result.seed == seed
    row_major = sorted(result.positions)
    assert result.positions == random.Random(seed).sample(row_major, k=len(row_major))


def test_only_tissue_patches(result: WsiInput, headers: list[Dataset]) -> None:
    rows, columns, _ = _levels(headers)[result.level_index]
    _assert_tissue_patches(result, rows, columns)
    # And from the pixels: every patch is darker than empty glass.
    background = sum(BACKGROUND_RGB) / 3
    for patch, position in zip(result.patches, result.positions, strict=True):
        assert np.asarray(patch).mean() < background - 5, position


def _assert_tissue_patches(result: WsiInput, rows: int, columns: int) -> None:
    """Clearly-tissue full patches are chosen, clearly-glass ones are not, nothing else is."""
    mask = tissue_mask(columns, rows)
    grid = _full_grid(rows, columns)
    chosen = set(result.positions)
    assert chosen <= set(grid)
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


def test_sampling_is_seeded_and_keeps_the_sampled_order(
    result: WsiInput, wsi_files: list[Path]
) -> None:
    row_major = sorted(result.positions)  # every tissue candidate (fewer than 125)
    first = wsi_to_patches(wsi_files, max_patches=3, seed=7)
    again = wsi_to_patches(wsi_files, max_patches=3, seed=7)
    assert first.seed == 7
    assert first.positions == again.positions == random.Random(7).sample(row_major, k=3)
    assert (
        f"{len(row_major)} tissue patches, random sample of 3 sent in sampled order (seed 7)"
        in first.notes
    )
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


# --- The recipe on slides laid out cell by cell (fixtures.wsi.make_grid_slide) ---
#
# Level 0 is 10X in 896 px tiles, one per patch cell, each uniform stroma or glass.
# Neither side is a multiple of 896: 3 × 896 + 512 rows and 4 × 896 + 608 columns,
# and the ragged strips (more than the 25 % tissue rule of a patch) are tissue, so a
# padded edge patch would qualify if the reader still made one.
SMALL_ROWS, SMALL_COLUMNS = 3 * 896 + 512, 4 * 896 + 608
# Cells (i, j) of the full 3 × 4 patch grid that are glass; row 3 and column 4 are
# the ragged strips, all tissue.
SMALL_GLASS = {(0, 1), (1, 3), (2, 0), (2, 2)}
SMALL_LAYOUT = [[(i, j) not in SMALL_GLASS for j in range(5)] for i in range(4)]
# Listed by hand, row-major: the full cells of rows 0–2, columns 0–3, less the glass.
SMALL_CANDIDATES = [
    (0, 0), (0, 1792), (0, 2688),
    (896, 0), (896, 896), (896, 1792),
    (1792, 896), (1792, 2688),
]  # fmt: skip
SERIES_A = "2.25.314159265358979323846264338327950288"
SERIES_B = "2.25.271828182845904523536028747135266249"


def _stroma(patch: Image.Image) -> bool:
    """Uniform stroma (through JPEG): no glass, no padding, anywhere in the patch."""
    pixels = np.asarray(patch, dtype=np.int16).reshape(-1, 3)
    return bool((np.abs(pixels - np.array(STROMA_RGB)) <= 4).all())


def test_grid_slide_layout_is_as_listed() -> None:
    # The hand-written candidate list against the layout it was written from.
    assert [
        (896 * i, 896 * j) for i in range(3) for j in range(4) if SMALL_LAYOUT[i][j]
    ] == SMALL_CANDIDATES
    assert all(SMALL_LAYOUT[3]) and all(row[4] for row in SMALL_LAYOUT)


def test_only_full_patches_inside_a_ragged_level() -> None:
    slide = wsi_to_patches(make_grid_slide(SMALL_LAYOUT, SMALL_ROWS, SMALL_COLUMNS))
    assert slide.level_index == 0 and slide.magnification == pytest.approx(10.0)
    assert sorted(slide.positions) == SMALL_CANDIDATES
    padding = np.array(GRID_EDGE_PADDING_RGB)
    for patch, (top, left) in zip(slide.patches, slide.positions, strict=True):
        assert top % 896 == 0 and left % 896 == 0
        assert top + 896 <= SMALL_ROWS and left + 896 <= SMALL_COLUMNS, (top, left)
        assert patch.size == (896, 896)
        pixels = np.asarray(patch, dtype=np.int16)
        assert not (np.abs(pixels - padding) <= 8).all(axis=2).any(), (top, left)
        assert _stroma(patch), (top, left)


def test_sent_order_is_the_notebooks_random_sample() -> None:
    datasets = make_grid_slide(SMALL_LAYOUT, SMALL_ROWS, SMALL_COLUMNS, series_uid=SERIES_A)
    n = len(SMALL_CANDIDATES)
    for seed in (0, 11, 2**63 + 5):
        slide = wsi_to_patches(datasets, seed=seed)
        # n ≤ 125: random.sample returns a permutation, sent as it comes.
        assert slide.positions == random.Random(seed).sample(SMALL_CANDIDATES, k=min(125, n))
        assert slide.positions != SMALL_CANDIDATES  # not spatial (fixed seeds: no flake)
        assert slide.seed == seed
        assert slide.notes == []
        assert all(_stroma(p) for p in slide.patches)
    cut = wsi_to_patches(datasets, seed=11, max_patches=3)
    assert cut.positions == random.Random(11).sample(SMALL_CANDIDATES, k=3)
    assert cut.notes == [f"{n} tissue patches, random sample of 3 sent in sampled order (seed 11)"]


def test_more_than_125_tissue_patches_are_sampled_to_125() -> None:
    # A 12 × 12 full grid (plus ragged strips of 512 and 608 px, on tissue) with
    # every ninth cell (i + 2j ≡ 0 mod 9) glass: 128 candidates.
    layout = [[(i + 2 * j) % 9 != 0 or i == 12 or j == 12 for j in range(13)] for i in range(13)]
    rows, columns = 12 * 896 + 512, 12 * 896 + 608
    candidates = [(896 * i, 896 * j) for i in range(12) for j in range(12) if (i + 2 * j) % 9 != 0]
    assert len(candidates) == 128
    slide = wsi_to_patches(make_grid_slide(layout, rows, columns, series_uid=SERIES_B))
    seed = _uid_seed(SERIES_B)
    assert slide.seed == seed
    assert slide.positions == random.Random(seed).sample(candidates, k=125)
    assert len(slide.patches) == 125
    assert slide.notes == [
        f"128 tissue patches, random sample of 125 sent in sampled order (seed {seed})"
    ]
    # Spot checks: pixels of the first, a middle and the last patch sent.
    assert all(_stroma(slide.patches[k]) for k in (0, 62, 124))


def test_same_series_same_patches_same_order_seeded_by_its_uid() -> None:
    first = wsi_to_patches(
        make_grid_slide(SMALL_LAYOUT, SMALL_ROWS, SMALL_COLUMNS, series_uid=SERIES_A)
    )
    # The same series again, as new instances (new SOP Instance UIDs), in another order.
    again = wsi_to_patches(
        make_grid_slide(SMALL_LAYOUT, SMALL_ROWS, SMALL_COLUMNS, series_uid=SERIES_A)[::-1]
    )
    seed = _uid_seed(SERIES_A)
    assert first.seed == again.seed == seed
    expected = random.Random(seed).sample(SMALL_CANDIDATES, k=len(SMALL_CANDIDATES))
    assert first.positions == again.positions == expected
    for a, b in zip(first.patches, again.patches, strict=True):
        assert np.array_equal(np.asarray(a), np.asarray(b))
    # Another series with the same layout: same patches, another seed and order.
    other = wsi_to_patches(
        make_grid_slide(SMALL_LAYOUT, SMALL_ROWS, SMALL_COLUMNS, series_uid=SERIES_B)
    )
    assert other.seed == _uid_seed(SERIES_B) != seed
    assert sorted(other.positions) == SMALL_CANDIDATES
    assert other.positions == random.Random(other.seed).sample(SMALL_CANDIDATES, k=8)
    assert other.positions != first.positions


def test_level_smaller_than_a_patch_raises_naming_the_series() -> None:
    # 2000 × 800: two patches wide but not one high, all tissue. Nothing is padded.
    datasets = make_grid_slide([[True, True, True]], 800, 2000, series_uid=SERIES_A)
    with pytest.raises(ImagingError) as raised:
        wsi_to_patches(datasets)
    message = str(raised.value)
    assert SERIES_A in message
    assert "level 0" in message and "2000×800" in message and "0 candidates" in message


def test_tissue_only_in_the_ragged_strip_raises() -> None:
    # Tissue only past the last full patch: the old padded edge patches would have
    # held 57 % / 68 % tissue; full patches hold none.
    layout = [[i == 3 or j == 4 for j in range(5)] for i in range(4)]
    datasets = make_grid_slide(layout, SMALL_ROWS, SMALL_COLUMNS, series_uid=SERIES_B)
    with pytest.raises(ImagingError) as raised:
        wsi_to_patches(datasets)
    message = str(raised.value)
    assert f"series {SERIES_B}" in message
    assert "12 full 896×896 patch candidates" in message and "tissue" in message
    assert f"level 0 ({SMALL_COLUMNS}×{SMALL_ROWS} px)" in message
