"""node.imaging: DICOM → MedGemma inputs, checked on pixel values.

Radiographs use the real CR ``RG1_*`` (four encodings) and deid-data's DX cat;
volumes use series built by ``fixtures.series`` from real CT/MR slices, plus a
few in-memory datasets whose stored values are chosen to hit window edges.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom import config
from pydicom.dataset import Dataset
from pydicom.pixels.processing import apply_windowing
from pydicom.uid import generate_uid

from fixtures.series import (
    MARKER_SLICE,
    inject_duplicate,
    inject_localizer,
    inject_localizer_and_duplicate,
    make_cr_study,
    make_ct_series,
    make_mr_series,
    marker_hu,
    source_path,
)
from node.imaging.errors import ImagingError
from node.imaging.radiograph import RadiographImage, radiograph_to_image
from node.imaging.volume import sample_indices, series_to_volume_input

RG1 = ("RG1_UNCR.dcm", "RG1_UNCI.dcm", "RG1_J2KR.dcm", "RG1_J2KI.dcm")


@pytest.fixture(scope="module")
def rg1_images() -> dict[str, RadiographImage]:
    return {name: radiograph_to_image(pydicom.dcmread(source_path(name))) for name in RG1}


@pytest.fixture
def strict_reading() -> Iterator[None]:
    """Reading validation that raises, for round trips of what we write."""
    old = config.settings.reading_validation_mode
    config.settings.reading_validation_mode = config.RAISE
    try:
        yield
    finally:
        config.settings.reading_validation_mode = old


def _ct_slice(hu: np.ndarray, *, position: float = 0.0, slope: float = 1.0) -> Dataset:
    """An in-memory CT slice (CT_small's header) whose pixels are exactly ``hu``."""
    ds = pydicom.dcmread(source_path("CT_small.dcm"))
    ds.SOPInstanceUID = generate_uid()
    ds.Rows, ds.Columns = hu.shape
    ds.RescaleSlope = f"{slope:g}"
    ds.RescaleIntercept = "-1024"
    ds.ImagePositionPatient = [0.0, 0.0, position]
    ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    if "PixelPaddingValue" in ds:
        del ds.PixelPaddingValue
    stored = np.rint((hu + 1024) / slope).astype(np.int16)
    ds.PixelData = stored.tobytes()
    return ds


def _grey_image(pixels: np.ndarray, photometric: str = "MONOCHROME2", **attrs: object) -> Dataset:
    """A minimal single-frame greyscale image with unsigned 16-bit pixels."""
    ds = pydicom.dcmread(source_path("RG1_UNCR.dcm"), stop_before_pixels=True)
    for keyword in ("WindowCenter", "WindowWidth"):
        if keyword in ds:
            delattr(ds, keyword)
    ds.SOPInstanceUID = generate_uid()
    ds.PhotometricInterpretation = photometric
    ds.Rows, ds.Columns = pixels.shape
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    for keyword, value in attrs.items():
        setattr(ds, keyword, value)
    ds.PixelData = pixels.astype(np.uint16).tobytes()
    return ds


# --- radiographs -------------------------------------------------------------------


def test_rg1_is_padded_to_a_centred_square(rg1_images: dict[str, RadiographImage]) -> None:
    result = rg1_images["RG1_UNCR.dcm"]
    assert (result.source_rows, result.source_columns) == (1955, 1841)
    assert result.image.size == (1955, 1955)
    assert result.image.mode == "RGB"
    assert (result.padding.top, result.padding.left) == (0, 57)
    assert result.window == (15000.0, 30000.0)
    pixels = np.asarray(result.image)
    assert not pixels[:, :57].any() and not pixels[:, 57 + 1841 :].any()
    assert np.array_equal(pixels[..., 0], pixels[..., 1])
    assert np.array_equal(pixels[..., 0], pixels[..., 2])


def test_rg1_monochrome1_is_inverted(rg1_images: dict[str, RadiographImage]) -> None:
    """MONOCHROME1: the highest stored value (most attenuation... displayed white) turns dark."""
    raw = pydicom.dcmread(source_path("RG1_UNCR.dcm")).pixel_array
    grey = np.asarray(rg1_images["RG1_UNCR.dcm"].image)[:, 57 : 57 + 1841, 0]
    brightest_raw = raw == raw.max()
    darkest_raw = raw == raw.min()
    assert grey[brightest_raw].max() < grey[darkest_raw].min()
    # Window 15000/30000 on 0…32767: raw max 26479 → ≈ 255 − 225, raw min 874 → ≈ 255 − 7.
    assert abs(int(grey[brightest_raw].mean()) - (255 - round(26479 / 30000 * 255))) <= 2
    assert abs(int(grey[darkest_raw].mean()) - (255 - round(874 / 30000 * 255))) <= 2


def test_rg1_encodings_give_nearly_the_same_image(
    rg1_images: dict[str, RadiographImage],
) -> None:
    reference = np.asarray(rg1_images["RG1_UNCR.dcm"].image).astype(np.int16)
    assert np.array_equal(np.asarray(rg1_images["RG1_J2KR.dcm"].image), reference)  # lossless
    for name in ("RG1_UNCI.dcm", "RG1_J2KI.dcm"):  # lossy twins
        other = rg1_images[name]
        assert (other.padding.top, other.padding.left, other.image.size) == (0, 57, (1955, 1955))
        diff = np.abs(np.asarray(other.image).astype(np.int16) - reference)
        assert diff.mean() < 1.0 and diff.max() <= 4, name


def test_dx_cat_from_deid_data() -> None:
    deid_data = pytest.importorskip("deid_data")
    path = Path(deid_data.__file__).parent / "data" / "animals" / "cat.dcm"
    if not path.exists():
        pytest.skip("deid-data's cat.dcm not present")
    result = radiograph_to_image(path)  # a path works as well as a dataset
    assert (result.source_rows, result.source_columns) == (2614, 3072)
    assert result.image.size == (3072, 3072)
    assert (result.padding.top, result.padding.left) == ((3072 - 2614) // 2, 0)
    assert result.window == (2048.0, 4096.0)
    pixels = np.asarray(result.image)
    assert not pixels[: result.padding.top].any()
    assert pixels[result.padding.top : result.padding.top + 2614].max() > 200


def test_min_max_fallback_inversion_and_padding_mask() -> None:
    pixels = np.array([[100, 200, 300, 400], [100, 200, 300, 9999]])
    ds = _grey_image(pixels, "MONOCHROME1", PixelPaddingValue=9999)
    result = radiograph_to_image(ds)
    assert result.window is None
    assert (result.image.size, result.padding.top, result.padding.left) == ((4, 4), 1, 0)
    grey = np.asarray(result.image)[1:3, :, 0]
    # Padding excluded from the min–max (else 100…400 would squash into ~0…8),
    # MONOCHROME1 inverted (100 → white), padding black.
    assert grey.tolist() == [[255, 170, 85, 0], [255, 170, 85, 0]]
    assert grey[1, 3] == 0


def test_presentation_lut_inverse_inverts_once() -> None:
    pixels = np.array([[0, 100]])
    mono2 = radiograph_to_image(_grey_image(pixels, PresentationLUTShape="INVERSE"))
    assert np.asarray(mono2.image)[0, :, 0].tolist() == [255, 0]
    assert mono2.notes
    mono1 = radiograph_to_image(_grey_image(pixels, "MONOCHROME1", PresentationLUTShape="INVERSE"))
    assert np.asarray(mono1.image)[0, :, 0].tolist() == [255, 0]
    plain = radiograph_to_image(_grey_image(pixels, PresentationLUTShape="IDENTITY"))
    assert np.asarray(plain.image)[0, :, 0].tolist() == [0, 255]


def test_monochrome1_is_inverted_before_the_rounding() -> None:
    """MEDGEMMA.md's order: window, MONOCHROME1 inverted, then np.round before the cast.
    LINEAR_EXACT (PS3.3 C.11.2.1.3.2), c = 2, w = 4: x = 2 → ((2 − 2) / 4 + 0.5) × 255 =
    127.5 exactly; inverted 255 − 127.5 = 127.5, rounded half to even: 128 (rounding first
    would give 255 − 128 = 127). x = 0 → 0 → 255; x = 4 → 255 → 0."""
    exact = {"WindowCenter": 2, "WindowWidth": 4, "VOILUTFunction": "LINEAR_EXACT"}
    # Three pixels are windowed one by one (row 1 of the padded 3×3) ...
    mono1 = radiograph_to_image(_grey_image(np.array([[0, 2, 4]]), "MONOCHROME1", **exact))
    assert np.asarray(mono1.image)[1, :, 0].tolist() == [255, 128, 0]
    mono2 = radiograph_to_image(_grey_image(np.array([[0, 2, 4]]), **exact))
    assert np.asarray(mono2.image)[1, :, 0].tolist() == [0, 128, 255]
    # ... five, more pixels than levels (0…4), through the table of levels (row 2 of 5×5).
    pixels = np.array([[0, 2, 4, 2, 2]])
    mono1 = radiograph_to_image(_grey_image(pixels, "MONOCHROME1", **exact))
    assert np.asarray(mono1.image)[2, :, 0].tolist() == [255, 128, 0, 128, 128]
    mono2 = radiograph_to_image(_grey_image(pixels, **exact))
    assert np.asarray(mono2.image)[2, :, 0].tolist() == [0, 128, 255, 128, 128]
    # Without a window, min–max: 0, 1, 2 → 0, 127.5, 255; inverted 255, 127.5, 0 → 128.
    stretched = radiograph_to_image(_grey_image(np.array([[0, 1, 2]]), "MONOCHROME1"))
    assert np.asarray(stretched.image)[1, :, 0].tolist() == [255, 128, 0]


def test_window_and_sigmoid_are_pydicom_s() -> None:
    pixels = np.array([[0, 1000, 2000, 3000, 65535]])
    linear = radiograph_to_image(_grey_image(pixels, WindowCenter=2000, WindowWidth=2000))
    assert linear.window == (2000.0, 2000.0)
    assert np.asarray(linear.image)[2, :, 0].tolist() == [0, 0, 128, 255, 255]
    sigmoid = radiograph_to_image(
        _grey_image(pixels, WindowCenter=2000, WindowWidth=2000, VOILUTFunction="SIGMOID")
    )
    row = np.asarray(sigmoid.image)[2, :, 0].tolist()
    assert row[2] == 128 and 0 < row[1] < 128 < row[3] < 255 and row == sorted(row)


@pytest.mark.parametrize("function", ["LINEAR", "LINEAR_EXACT", "SIGMOID"])
@pytest.mark.parametrize("signed", [False, True], ids=["unsigned", "signed"])
def test_window_through_a_table_of_levels_equals_pydicom_pixel_by_pixel(
    function: str, signed: bool
) -> None:
    """With more pixels than levels the node windows each level once and looks pixels up;
    every pixel must come out as pydicom's window applied to that pixel would make it."""
    rng = np.random.default_rng(7)
    low, high = (-1500, 2500) if signed else (0, 4095)
    pixels = rng.integers(low, high + 1, (96, 128))
    pixels[0, :3] = [624, 0, 1473]  # 600, −24 and 1449 after the rescale below
    ds = _grey_image(pixels, WindowCenter=600, WindowWidth=1700, VOILUTFunction=function)
    if signed:
        ds.PixelRepresentation = 1
        ds.PixelData = pixels.astype(np.int16).tobytes()
    ds.RescaleSlope, ds.RescaleIntercept = 1, -24
    values = pixels + -24
    windowed = apply_windowing(values.astype(np.float64), ds, index=0)
    with np.errstate(over="ignore"):
        y_min, y_max = apply_windowing(np.array([-np.inf, np.inf]), ds, index=0)
    expected = np.round(np.clip((windowed - y_min) / (y_max - y_min), 0, 1) * 255)
    got = np.asarray(radiograph_to_image(ds).image)[16:112, :, 0]  # rows padded to square
    assert np.array_equal(got, expected.astype(np.uint8))
    assert len(np.unique(got)) > 100  # the window spreads the levels: a real comparison
    if function == "LINEAR":
        # By hand (PS3.3 C.11.2.1.2.1, c = 600, w = 1700): ((x − 599.5) / 1699 + 0.5) · 255,
        # rounded: 600 → 127.58 → 128; −24 → 33.92 → 34; 1449 → 255 (the top of the window).
        assert got[0, :3].tolist() == [128, 34, 255]


def test_multiple_windows_use_the_first() -> None:
    pixels = np.array([[0, 1000, 2000]])
    ds = _grey_image(pixels, WindowCenter=[1000, 50000], WindowWidth=[2000, 10])
    result = radiograph_to_image(ds)
    assert result.window == (1000.0, 2000.0)
    assert np.asarray(result.image)[1, :, 0].tolist() == [0, 128, 255]


def test_voi_lut_sequence_only_without_a_window() -> None:
    """The container applies the first window when there is one and never reads a VOI LUT
    Sequence; the node uses the sequence only for an image without a window."""
    pixels = np.array([[0, 1, 2, 3]])
    item = Dataset()
    item.LUTDescriptor = [4, 0, 8]
    item.LUTData = [0, 255, 0, 255]  # a non-monotonic LUT proves the LUT was used
    ds = _grey_image(pixels)
    ds.VOILUTSequence = [item]
    lut = radiograph_to_image(ds)
    assert (lut.window, lut.voi) == (None, "voi_lut_sequence")
    assert np.asarray(lut.image)[1, :, 0].tolist() == [0, 255, 0, 255]
    ds.WindowCenter, ds.WindowWidth = 2, 4
    windowed = radiograph_to_image(ds)
    assert (windowed.window, windowed.voi) == ((2.0, 4.0), "window")
    # LINEAR (PS3.3 C.11.2.1.2.1), c = 2, w = 4: x ≤ c − 0.5 − (w−1)/2 = 0 → 0;
    # x > c − 0.5 + (w−1)/2 = 3 → max; else ((x − 1.5) / 3 + 0.5): 1 → 1/3, 2 → 2/3,
    # 3 → 1; ×255 and rounded: 85, 170, 255.
    assert np.asarray(windowed.image)[1, :, 0].tolist() == [0, 85, 170, 255]
    assert any("VOI LUT Sequence not used" in note for note in windowed.notes)


def test_missing_pixel_data_names_the_uid() -> None:
    ds = pydicom.dcmread(source_path("RG1_UNCR.dcm"), stop_before_pixels=True)
    with pytest.raises(ImagingError, match=f"{ds.SOPInstanceUID}.*no pixel data"):
        radiograph_to_image(ds)


def test_unsupported_photometric_names_the_uid() -> None:
    ds = _grey_image(np.zeros((2, 2)), "PALETTE COLOR")
    with pytest.raises(ImagingError, match=f"{ds.SOPInstanceUID}.*PALETTE COLOR"):
        radiograph_to_image(ds)


def test_cr_fixture_round_trips_under_strict_reading(tmp_path: Path, strict_reading: None) -> None:
    path = make_cr_study(tmp_path, patient_id="P-1", study_date="20230102")
    ds = pydicom.dcmread(path)
    original = pydicom.dcmread(source_path("RG1_UNCR.dcm"), stop_before_pixels=True)
    assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
    assert ds.file_meta.MediaStorageSOPClassUID == ds.SOPClassUID
    assert ds.SOPInstanceUID != original.SOPInstanceUID
    assert ds.StudyInstanceUID != original.StudyInstanceUID
    assert (ds.PatientID, ds.BodyPartExamined, ds.StudyDate) == ("P-1", "CHEST", "20230102")
    assert radiograph_to_image(ds).image.size == (1955, 1955)


# --- sampling ---------------------------------------------------------------------


def test_sample_indices_follow_the_notebook() -> None:
    assert sample_indices(40) == list(range(40))
    assert sample_indices(85) == list(range(85))
    picked = sample_indices(300)
    assert len(picked) == 85
    assert picked == [round(i / 85 * 299) for i in range(1, 86)]
    assert picked[0] == 4 and picked[-1] == 299  # the notebook starts at i = 1
    assert picked == sorted(set(picked))
    assert sample_indices(86) == [round(i / 85 * 85) for i in range(1, 86)]
    assert sample_indices(0) == []


# --- CT volumes ---------------------------------------------------------------------


def test_ct_windows_on_known_hu() -> None:
    """Values worked out by hand from MEDGEMMA.md: clip, scale to 0–255, np.round (half to
    even), uint8. R: −1024…1024, G: −135…215, B: 0…80."""
    hu = np.array(
        [[0, -2000, 3000, 40], [-1024, 1024, -135, 80], [100, -100, 215, 20], [0, 0, 0, 0]],
        dtype=np.float64,
    )
    volume = series_to_volume_input([_ct_slice(hu)])
    assert volume.modality == "CT" and len(volume.images) == 1
    rgb = np.asarray(volume.images[0])
    # HU 0: R = 1024/2048·255 = 127.5 → 128 (truncation gave 127); G = 135/350·255 = 98.36 → 98.
    assert rgb[0, 0].tolist() == [128, 98, 0]
    assert rgb[0, 1].tolist() == [0, 0, 0]  # −2000: below every window
    assert rgb[0, 2].tolist() == [255, 255, 255]  # 3000: above every window
    # HU 40: R = 1064/2048·255 = 132.48 → 132; G = 175/350·255 = 127.5 → 128; B = 127.5 → 128.
    assert rgb[0, 3].tolist() == [132, 128, 128]
    assert rgb[1, 0].tolist() == [0, 0, 0]
    assert rgb[1, 1].tolist() == [255, 255, 255]
    assert rgb[1, 2].tolist() == [111, 0, 0]  # R = 889/2048·255 = 110.69 → 111
    assert rgb[1, 3].tolist() == [137, 157, 255]  # R 137.46; G = 215/350·255 = 156.64 → 157
    assert rgb[2, 0].tolist() == [140, 171, 255]  # HU 100: R 139.95, G 171.21
    assert rgb[2, 1].tolist() == [115, 26, 0]  # HU −100: R 115.05; G = 35/350·255 = 25.5 → 26
    assert rgb[2, 2].tolist() == [154, 255, 255]  # HU 215: R 154.27
    assert rgb[2, 3].tolist() == [130, 113, 64]  # HU 20: R 129.99, G 112.93, B 63.75


def test_non_square_ct_slice_is_zero_padded_to_a_centred_square() -> None:
    """The container pads every image: dh = width − height, dh // 2 rows on top, the rest
    below (and the same for columns)."""
    wide = series_to_volume_input([_ct_slice(np.full((2, 7), 40.0))])
    rgb = np.asarray(wide.images[0])
    assert rgb.shape == (7, 7, 3)  # dh = 5: 2 rows on top, 3 below
    assert (wide.padding.top, wide.padding.bottom, wide.padding.left, wide.padding.right) == (
        2,
        3,
        0,
        0,
    )
    assert rgb[:2].max() == 0 and rgb[4:].max() == 0
    assert (rgb[2:4] == [132, 128, 128]).all()  # HU 40, by hand above
    assert wide.geometry["padding"] == {"top": 2, "bottom": 3, "left": 0, "right": 0}
    tall = series_to_volume_input([_ct_slice(np.full((6, 3), 40.0))])
    assert tall.padding.as_dict() == {"top": 0, "bottom": 0, "left": 1, "right": 2}
    assert np.asarray(tall.images[0])[:, 0].max() == 0
    assert np.asarray(tall.images[0])[:, 4:].max() == 0
    square = series_to_volume_input([_ct_slice(np.zeros((4, 4)))])
    assert square.padding.is_none and square.images[0].size == (4, 4)


def test_ct_lut_path_equals_float_path() -> None:
    """Integer HU go through the LUT, a fractional slope through float math; same pixels."""
    hu = np.arange(-1100, 1100, 2, dtype=np.float64).reshape(50, 22)
    lut = np.asarray(series_to_volume_input([_ct_slice(hu, slope=1.0)]).images[0])
    float_path = np.asarray(series_to_volume_input([_ct_slice(hu, slope=0.5)]).images[0])
    assert np.array_equal(lut, float_path)


def test_ct_slices_sorted_by_position_not_instance_number(tmp_path: Path) -> None:
    paths = make_ct_series(tmp_path, 12, spacing=2.5)
    numbers = [int(pydicom.dcmread(p, stop_before_pixels=True).InstanceNumber) for p in paths]
    assert numbers != sorted(numbers)  # the fixture really disagrees with position
    shuffled = sorted(tmp_path.glob("*.dcm"))  # file names follow InstanceNumber
    volume = series_to_volume_input(shuffled)
    assert volume.slice_indices == list(range(12))
    assert np.allclose(np.diff(volume.z_positions), 2.5)
    markers = [np.asarray(image)[MARKER_SLICE][..., 0] for image in volume.images]
    expected_r = [round((marker_hu(k) + 1024) / 2048 * 255) for k in range(12)]
    assert [int(m[0, 0]) for m in markers] == expected_r
    # Shuffled numbers say nothing about the direction: ascending, and the record says so.
    assert len(volume.notes) == 1 and "don't follow the slice positions" in volume.notes[0]
    assert volume.geometry["slice_order"] == "ascending"
    assert volume.geometry["slice_order_from"] == "default: InstanceNumbers inconsistent"
    assert volume.series_uid == pydicom.dcmread(paths[0]).SeriesInstanceUID
    # Datasets in any order give the same images as paths.
    from_datasets = series_to_volume_input([pydicom.dcmread(p) for p in reversed(paths)])
    assert all(
        np.array_equal(np.asarray(a), np.asarray(b))
        for a, b in zip(volume.images, from_datasets.images, strict=True)
    )


def _renumber(paths: list[Path], numbers: list[int | None]) -> None:
    for path, number in zip(paths, numbers, strict=True):
        ds = pydicom.dcmread(path)
        if number is None:
            del ds.InstanceNumber
        else:
            ds.InstanceNumber = number
        ds.save_as(path)


def test_slices_go_in_the_direction_their_instance_numbers_rise(tmp_path: Path) -> None:
    """A CT numbered head to foot (numbers fall as z rises) reaches the model in the
    notebook's InstanceNumber order: the highest slice first."""
    paths = make_ct_series(tmp_path, 6, spacing=2.0, shuffle=False)  # position order
    _renumber(paths, [6, 5, 4, 3, 2, 1])
    volume = series_to_volume_input(list(reversed(paths)))
    first = float(pydicom.dcmread(paths[0], stop_before_pixels=True).ImagePositionPatient[2])
    assert volume.z_positions == [first + 2.0 * k for k in (5, 4, 3, 2, 1, 0)]
    assert volume.slice_indices == [5, 4, 3, 2, 1, 0]
    sent_numbers = [
        int(pydicom.dcmread(p, stop_before_pixels=True).InstanceNumber)
        for uid in volume.source_instance_uids
        for p in paths
        if pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID == uid
    ]
    assert sent_numbers == [1, 2, 3, 4, 5, 6]
    assert volume.notes == [] and volume.geometry["slice_order"] == "descending"
    # Sampling picks from the list in that order: with 3 of 6, the notebook's
    # round(i / 3 · 5) for i = 1…3 gives 2, 3, 5 — InstanceNumbers 3, 4 and 6.
    sampled = series_to_volume_input(paths, max_slices=3)
    assert sampled.z_positions == [first + 2.0 * k for k in (3, 2, 0)]


def test_slice_direction_without_usable_numbers_is_ascending_and_noted(tmp_path: Path) -> None:
    paths = make_ct_series(tmp_path, 4, spacing=2.0, shuffle=False)
    _renumber(paths, [None, None, None, None])
    volume = series_to_volume_input(paths)
    assert np.all(np.diff(volume.z_positions) > 0)
    assert volume.geometry["slice_order_from"] == "default: no InstanceNumbers"
    assert any("no InstanceNumbers" in note for note in volume.notes)
    # One renumbered slice in a long series doesn't flip it (≥ 90 % of pairs agree).
    many = make_ct_series(tmp_path / "many", 24, spacing=2.0, shuffle=False, marker=False)
    _renumber(many, [*range(24, 12, -1), 40, *range(11, 0, -1)])
    mostly = series_to_volume_input(many)
    assert mostly.geometry["slice_order"] == "descending"
    assert any("mostly fall" in note for note in mostly.notes)


def test_long_ct_series_is_sampled_with_the_notebook_formula(tmp_path: Path) -> None:
    paths = make_ct_series(tmp_path, 300, source="CT_small.dcm", spacing=1.0, marker=False)
    volume = series_to_volume_input(paths)
    assert len(volume.images) == 85
    assert volume.slice_indices == sample_indices(300)
    first = float(pydicom.dcmread(paths[0], stop_before_pixels=True).ImagePositionPatient[2])
    assert np.allclose(volume.z_positions, [first + i for i in sample_indices(300)])


def test_localizer_and_duplicate_are_dropped_and_noted(tmp_path: Path) -> None:
    paths = make_ct_series(tmp_path, 10)
    localizer, duplicate = inject_localizer_and_duplicate(paths, tmp_path, duplicate_index=3)
    volume = series_to_volume_input(sorted(tmp_path.glob("*.dcm")))
    assert len(volume.images) == 10
    loc_uid = pydicom.dcmread(localizer).SOPInstanceUID
    dup_uid = pydicom.dcmread(duplicate).SOPInstanceUID
    assert any("localizer" in n and loc_uid in n for n in volume.notes)
    assert any("duplicate" in n and dup_uid in n for n in volume.notes)
    # The ORIGINAL kept: its marker is the position marker, not the DERIVED copy's max.
    r = int(np.asarray(volume.images[3])[4, 4, 0])
    assert r == round((marker_hu(3) + 1024) / 2048 * 255)


def test_derived_duplicate_listed_first_still_loses(tmp_path: Path) -> None:
    paths = make_ct_series(tmp_path, 5, shuffle=False)
    duplicate = inject_duplicate(paths, tmp_path, index=0)
    volume = series_to_volume_input([duplicate, *paths])
    assert len(volume.images) == 5
    assert int(np.asarray(volume.images[0])[4, 4, 0]) == round((marker_hu(0) + 1024) / 2048 * 255)


def test_localizer_without_localizer_image_type_is_dropped_by_orientation(
    tmp_path: Path,
) -> None:
    paths = make_ct_series(tmp_path, 6)
    localizer = inject_localizer(paths, tmp_path)
    ds = pydicom.dcmread(localizer)
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.save_as(localizer)
    volume = series_to_volume_input([*paths, localizer])
    assert len(volume.images) == 6
    assert any("orientation" in n and ds.SOPInstanceUID in n for n in volume.notes)


def test_gap_is_noted_with_values(tmp_path: Path) -> None:
    paths = make_ct_series(tmp_path, 8, spacing=2.0, source="CT_small.dcm")
    volume = series_to_volume_input(paths[:4] + paths[6:])
    assert len(volume.images) == 6
    gap_notes = [n for n in volume.notes if "gap" in n]
    assert gap_notes and "6.00 mm" in gap_notes[0] and "2.00 mm" in gap_notes[0]


def test_irregular_spacing_is_noted(tmp_path: Path) -> None:
    datasets = [_ct_slice(np.zeros((4, 4)), position=z) for z in (0.0, 1.0, 2.0, 3.2, 4.2, 5.2)]
    volume = series_to_volume_input(datasets)
    assert any("irregular slice spacing" in n and "1.200" in n for n in volume.notes)


def test_unreadable_file_is_dropped_with_a_note(tmp_path: Path) -> None:
    """Choice: a file that isn't DICOM at all is noted and skipped, not fatal."""
    paths = make_ct_series(tmp_path, 5, source="CT_small.dcm")
    junk = tmp_path / "junk.dcm"
    junk.write_bytes(b"not a dicom file at all")
    volume = series_to_volume_input([*paths, junk])
    assert len(volume.images) == 5
    assert any("unreadable" in n and "junk.dcm" in n for n in volume.notes)


def test_truncated_pixel_data_raises_naming_series_and_instance(tmp_path: Path) -> None:
    """Choice: a sampled slice that reads but won't decode is fatal (no silent resampling)."""
    paths = make_ct_series(tmp_path, 5, source="CT_small.dcm")
    broken = paths[2]
    broken.write_bytes(broken.read_bytes()[:-10_000])
    header = pydicom.dcmread(paths[0], stop_before_pixels=True)
    broken_uid = pydicom.dcmread(broken, stop_before_pixels=True).SOPInstanceUID
    with pytest.raises(ImagingError) as info:
        series_to_volume_input(paths)
    assert header.SeriesInstanceUID in str(info.value)
    assert broken_uid in str(info.value)


def test_mixed_matrix_keeps_the_largest_stack(tmp_path: Path) -> None:
    big = [_ct_slice(np.zeros((8, 8)), position=z) for z in range(5)]
    small = [_ct_slice(np.zeros((4, 4)), position=z) for z in range(2)]
    volume = series_to_volume_input([*small, *big])
    assert len(volume.images) == 5 and volume.images[0].size == (8, 8)
    assert any("matrix 4x4 vs 8x8" in n for n in volume.notes)


def test_no_usable_slice_raises_naming_the_series() -> None:
    ds = pydicom.dcmread(source_path("CT_small.dcm"), stop_before_pixels=True)
    with pytest.raises(ImagingError, match=ds.SeriesInstanceUID):
        series_to_volume_input([ds])
    localizer = copy.deepcopy(pydicom.dcmread(source_path("CT_small.dcm")))
    localizer.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
    with pytest.raises(ImagingError, match=localizer.SeriesInstanceUID):
        series_to_volume_input([localizer])
    with pytest.raises(ImagingError, match="no readable"):
        series_to_volume_input([])


def test_non_volume_modality_is_refused() -> None:
    ds = _ct_slice(np.zeros((4, 4)))
    ds.Modality = "PT"
    with pytest.raises(ImagingError, match=f"{ds.SeriesInstanceUID}.*'PT'"):
        series_to_volume_input([ds])


def test_ct_fixture_round_trips_under_strict_reading(tmp_path: Path, strict_reading: None) -> None:
    study_uid = generate_uid()
    paths = make_ct_series(tmp_path, 3, study_uid=study_uid, patient_id="P-2")
    uids = set()
    for path in paths:
        ds = pydicom.dcmread(path)
        assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
        assert ds.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
        assert (ds.StudyInstanceUID, ds.PatientID) == (study_uid, "P-2")
        assert ds.pixel_array.shape == (512, 512)
        uids.add(ds.SOPInstanceUID)
    assert len(uids) == 3


# --- MR volumes ---------------------------------------------------------------------


def test_mr_min_max_over_the_whole_volume(tmp_path: Path) -> None:
    paths = make_mr_series(tmp_path, 6)
    # Make slice 0 dim (values halved) so a per-slice stretch would differ from a global one.
    ds = pydicom.dcmread(paths[0])
    ds.PixelData = (ds.pixel_array // 2).astype(ds.pixel_array.dtype).tobytes()
    ds.save_as(paths[0])
    stored = np.stack([pydicom.dcmread(p).pixel_array for p in paths]).astype(np.float64)
    volume = series_to_volume_input(paths)
    assert volume.modality == "MR"
    grey = np.stack([np.asarray(image) for image in volume.images])
    assert np.array_equal(grey[..., 0], grey[..., 1])
    assert np.array_equal(grey[..., 0], grey[..., 2])
    assert grey.min() == 0 and grey.max() == 255
    expected = ((stored - stored.min()) / (stored.max() - stored.min()) * 255).astype(np.uint8)
    assert np.abs(grey[..., 0].astype(int) - expected).max() <= 1
    assert grey[0].max() < 200  # the dim slice stays dim: one scale for all slices


def test_mr_min_max_includes_slices_that_are_not_sent(tmp_path: Path) -> None:
    """One min–max over the whole volume, as the official recipe: a bright slice the
    sample skips still sets the scale of the slices that are sent."""
    paths = make_mr_series(tmp_path, 6, shuffle=False)
    ds = pydicom.dcmread(paths[0])
    ds.PixelData = (ds.pixel_array.astype(np.uint16) * 2).astype(ds.pixel_array.dtype).tobytes()
    ds.save_as(paths[0])
    stored = np.stack([pydicom.dcmread(p).pixel_array for p in paths]).astype(np.float64)
    low, high = stored.min(), stored.max()
    assert high == stored[0].max() > stored[1:].max()  # the extreme sits in slice 0 only
    # 3 of 6 slices: the notebook's round(i / 3 · 5), i = 1…3, gives slices 2, 3 and 5.
    volume = series_to_volume_input(paths, max_slices=3)
    grey = np.stack([np.asarray(image)[..., 0] for image in volume.images])
    expected = np.round((stored[[2, 3, 5]] - low) / (high - low) * 255).astype(np.uint8)
    assert np.abs(grey.astype(int) - expected).max() <= 1  # float32 vs float64 at .5
    assert grey.max() < 255  # a per-sample stretch would have reached 255
