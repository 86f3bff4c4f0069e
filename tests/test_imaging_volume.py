"""CT/MR volumes: enhanced multi-frame, SimpleITK images, planes, resampling, messy series.

Every series here is built by ``fixtures.series`` from real pydicom(-data)
slices; the CT marker block (rows/cols 4–11, HU = marker_hu(position index))
lets a test read from the *pixels* which slice landed where.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.uid import generate_uid

from fixtures.series import (
    MARKER_SLICE,
    add_acquisition,
    inject_localizer,
    make_ct_series,
    make_enhanced_ct,
    make_mr_series,
    make_two_stack_series,
    marker_hu,
    source_path,
)
from node.imaging.errors import ImagingError
from node.imaging.volume import series_to_sitk, series_to_volume_input

SMALL = "CT_small.dcm"  # 128², fast; 693_UNCR (512²) where the size matters


def _r(hu: float) -> int:
    """R channel of integer HU in the −1024…1024 window, rounded half to even (np.round)."""
    return round((min(max(hu, -1024), 1024) + 1024) / 2048 * 255)


def _notes_besides_order(notes: list[str]) -> list[str]:
    """The notes, less the one the fixtures' shuffled InstanceNumbers cause."""
    return [note for note in notes if "InstanceNumbers don't follow" not in note]


def _markers(volume_images: list) -> list[int]:  # type: ignore[type-arg]
    return [int(np.asarray(image)[MARKER_SLICE][0, 0, 0]) for image in volume_images]


# --- enhanced multi-frame ------------------------------------------------------------


def test_enhanced_ct_frames_sorted_along_normal_with_per_frame_rescale(tmp_path: Path) -> None:
    path, order = make_enhanced_ct(tmp_path, 12, spacing=5.0)
    assert order != sorted(order)  # frames really are stored out of order
    volume = series_to_volume_input([path])
    assert volume.modality == "CT" and len(volume.images) == 12
    # Odd frames carry their own intercept; the markers come out right only through it.
    assert _markers(volume.images) == [_r(marker_hu(k)) for k in range(12)]
    assert np.allclose(np.diff(volume.z_positions), 5.0)
    assert volume.geometry["multiframe"] is True
    assert volume.geometry["spacing_mm"] == [0.3887, 0.3887, 5.0]
    assert volume.plane == "axial" and _notes_besides_order(volume.notes) == []


def test_several_enhanced_objects_form_one_stack(tmp_path: Path) -> None:
    study, series, frame_of_reference = generate_uid(), generate_uid(), generate_uid()
    ids = {"study_uid": study, "series_uid": series, "frame_of_reference_uid": frame_of_reference}
    upper, _ = make_enhanced_ct(tmp_path, 5, first_index=5, file_name="B.dcm", **ids)
    lower, _ = make_enhanced_ct(tmp_path, 5, first_index=0, file_name="A.dcm", seed=3, **ids)
    volume = series_to_volume_input([upper, lower])
    assert _markers(volume.images) == [_r(marker_hu(k)) for k in range(10)]
    assert volume.series_uid == series


def test_real_enhanced_ct_supplemental(tmp_path: Path) -> None:
    """eCT_Supplemental: IOP [−1,0,0,0,1,0] (normal −z); frame 2 lies first along the normal,
    but the frames of one object go in their stored order (the InstanceNumber direction)."""
    path = source_path("eCT_Supplemental.dcm")
    volume = series_to_volume_input([path])
    assert volume.z_positions == [159.0, 149.0]
    assert volume.slice_indices == [1, 0] and volume.geometry["slice_order"] == "descending"
    frames = pydicom.dcmread(path).pixel_array.astype(np.int32) - 1024  # shared rescale
    for image, frame in zip(volume.images, (frames[0], frames[1]), strict=True):
        r = np.asarray(image)[..., 0]
        expected = np.round((np.clip(frame, -1024, 1024) + 1024) / 2048 * 255).astype(np.uint8)
        assert np.abs(r.astype(int) - expected).max() <= 1
    image = series_to_sitk([path])
    assert image.GetOrigin() == pytest.approx((99.5, -301.5, -149.0))
    assert image.GetSpacing() == pytest.approx((0.388672, 0.388672, 10.0))
    assert image.GetDirection() == pytest.approx((-1, 0, 0, 0, 1, 0, 0, 0, -1))


@pytest.mark.parametrize(
    "name",
    [
        "emri_small.dcm",
        "emri_small_RLE.dcm",
        "emri_small_big_endian.dcm",
        "emri_small_jpeg_2k_lossless.dcm",
        "emri_small_jpeg_ls_lossless.dcm",
    ],
)
def test_enhanced_mr_encodings_without_functional_groups(name: str) -> None:
    """emri_small* carry no functional groups: frames in stored order, said so, same pixels."""
    volume = series_to_volume_input([source_path(name)])
    reference = pydicom.dcmread(source_path("emri_small.dcm")).pixel_array.astype(np.float64)
    expected = ((reference - reference.min()) / (reference.max() - reference.min()) * 255).astype(
        np.uint8
    )
    grey = np.stack([np.asarray(image)[..., 0] for image in volume.images])
    assert volume.modality == "MR" and volume.plane == "unknown"
    assert np.abs(grey.astype(int) - expected).max() <= 1
    assert any("no per-frame geometry" in n and "stored order" in n for n in volume.notes)
    assert volume.geometry["geometry_known"] is False


# --- SimpleITK ------------------------------------------------------------------------


def test_series_to_sitk_matches_image_series_reader(tmp_path: Path) -> None:
    make_ct_series(tmp_path, 16, source=SMALL, spacing=2.5)  # shuffled InstanceNumbers
    files = list(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(tmp_path)))
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(files)
    theirs = reader.Execute()
    ours = series_to_sitk(sorted(tmp_path.glob("*.dcm")))
    assert ours.GetSize() == theirs.GetSize() == (128, 128, 16)
    assert ours.GetOrigin() == pytest.approx(theirs.GetOrigin(), abs=1e-4)
    assert ours.GetSpacing() == pytest.approx(theirs.GetSpacing(), abs=1e-4)
    assert ours.GetDirection() == pytest.approx(theirs.GetDirection(), abs=1e-6)
    ours_array = sitk.GetArrayFromImage(ours)
    assert ours_array.dtype == np.int16
    assert np.array_equal(ours_array.astype(np.int32), sitk.GetArrayFromImage(theirs))
    # HU: the marker of slice k reads marker_hu(k).
    assert [int(ours_array[k][MARKER_SLICE][0, 0]) for k in range(16)] == [
        marker_hu(k) for k in range(16)
    ]


def test_series_to_sitk_refuses_a_gap_unless_allowed(tmp_path: Path) -> None:
    paths = make_ct_series(tmp_path, 8, source=SMALL, spacing=2.0, skip=(4,))
    with pytest.raises(ImagingError, match="not evenly spaced.*gap"):
        series_to_sitk(paths)
    assert series_to_sitk(paths, allow_irregular=True).GetSize()[2] == 7


# --- planes and resampling -------------------------------------------------------------


def test_sagittal_is_sent_in_its_plane_with_a_note(tmp_path: Path) -> None:
    paths = make_ct_series(tmp_path, 10, source=SMALL, spacing=2.0, plane="sagittal")
    volume = series_to_volume_input(paths)
    assert volume.plane == "sagittal" and not volume.resampled
    assert len(volume.images) == 10 and volume.images[0].size == (128, 128)
    assert _markers(volume.images) == [_r(marker_hu(k)) for k in range(10)]
    assert "sent in the acquisition plane (sagittal); model was trained on axial" in volume.notes


def test_sagittal_resampled_to_axial_puts_each_voxel_in_place(tmp_path: Path) -> None:
    """Slice step = 3 pixel spacings, so the axial grid hits every source sample exactly."""
    source = pydicom.dcmread(source_path(SMALL), stop_before_pixels=True)
    pixel = float(source.PixelSpacing[0])
    n = 12
    paths = make_ct_series(tmp_path, n, source=SMALL, spacing=3 * pixel, plane="sagittal")
    volume = series_to_volume_input(paths, resample_axial=True)
    assert volume.resampled and volume.plane == "axial"
    assert volume.geometry["acquisition_plane"] == "sagittal"
    grid = volume.geometry["resampled_grid"]
    assert isinstance(grid, dict)
    assert grid["size"] == [(n - 1) * 3 + 1, 128, 128]
    assert grid["spacing_mm"] == pytest.approx([pixel] * 3, abs=1e-4)
    # The 34 × 128 axial grid is zero-padded to 128²: (128 − 34) // 2 = 47 columns each side.
    assert len(volume.images) == 85 and volume.images[0].size == (128, 128)
    assert volume.padding.as_dict() == {"top": 0, "bottom": 0, "left": 47, "right": 47}
    assert any(
        n.startswith("resampled from the acquisition plane (sagittal)") for n in volume.notes
    )
    # Source row r (z = IPP_z − r·pixel) of slice k (x = IPP_x − k·step) → axial slice at
    # that z, column (n − 1 − k)·3, row = source column.
    top = float(pydicom.dcmread(paths[0], stop_before_pixels=True).ImagePositionPatient[2])
    checked = 0
    for image, z in zip(volume.images, volume.z_positions, strict=True):
        r = round((top - z) / pixel)
        if 4 <= r <= 11:
            rgb = np.asarray(image)
            for k in range(n):
                column = 47 + (n - 1 - k) * 3
                assert abs(int(rgb[4:12, column, 0].min()) - _r(marker_hu(k))) <= 1
                assert abs(int(rgb[4:12, column, 0].max()) - _r(marker_hu(k))) <= 1
            checked += 1
    assert checked >= 4


def test_axial_is_never_resampled(tmp_path: Path) -> None:
    paths = make_ct_series(tmp_path, 6, source=SMALL)
    volume = series_to_volume_input(paths, resample_axial=True)
    assert (
        not volume.resampled
        and volume.plane == "axial"
        and _notes_besides_order(volume.notes) == []
    )


def test_coronal_mr_resampled_uses_zero_outside(tmp_path: Path) -> None:
    paths = make_mr_series(tmp_path, 8, plane="coronal", spacing=4.0)
    volume = series_to_volume_input(paths, resample_axial=True)
    assert volume.modality == "MR" and volume.resampled and volume.plane == "axial"
    grey = np.stack([np.asarray(image) for image in volume.images])
    assert np.array_equal(grey[..., 0], grey[..., 2])
    assert grey.min() == 0 and grey.max() == 255


def test_tilted_gantry_is_noted_and_resampled(tmp_path: Path) -> None:
    tilt, table_step = 20.0, 3.0
    paths = make_ct_series(tmp_path, 12, source=SMALL, spacing=table_step, gantry_tilt_deg=tilt)
    as_sent = series_to_volume_input(paths)
    assert as_sent.plane == "oblique" and not as_sent.resampled
    assert _markers(as_sent.images) == [_r(marker_hu(k)) for k in range(12)]
    assert as_sent.geometry["shear_deg"] == pytest.approx(tilt, abs=0.01)
    assert as_sent.geometry["slice_step_mm"] == pytest.approx(
        table_step * math.cos(math.radians(tilt)), abs=1e-3
    )
    assert any("sheared" in n and "GantryDetectorTilt 20°" in n for n in as_sent.notes)
    assert any(
        "sent in the acquisition plane (oblique, 20.0° from axial" in n for n in as_sent.notes
    )

    # The ITK image places every source pixel where its own IPP says (shear kept).
    image = series_to_sitk(paths)
    for k in (0, 5, 11):
        ds = pydicom.dcmread(paths[k], stop_before_pixels=True)
        ipp = np.asarray(ds.ImagePositionPatient, dtype=float)
        iop = np.asarray(ds.ImageOrientationPatient, dtype=float)
        spacing = float(ds.PixelSpacing[0])
        expected = ipp + 7 * spacing * iop[:3] + 9 * spacing * iop[3:]
        assert image.TransformIndexToPhysicalPoint((7, 9, k)) == pytest.approx(expected, abs=1e-3)

    resampled = series_to_volume_input(paths, resample_axial=True)
    assert resampled.resampled and resampled.plane == "axial"
    assert resampled.geometry["acquisition_plane"] == "oblique"
    assert np.all(np.diff(resampled.z_positions) > 0)


def test_gap_is_structured_and_blocks_resampling(tmp_path: Path) -> None:
    paths = make_ct_series(tmp_path, 10, source=SMALL, spacing=2.0, skip=(4, 5), plane="coronal")
    volume = series_to_volume_input(paths, resample_axial=True)
    assert len(volume.images) == 8 and not volume.resampled and volume.plane == "coronal"
    gaps = volume.geometry["gaps"]
    assert isinstance(gaps, list) and len(gaps) == 1
    assert gaps[0]["after_index"] == 3
    assert gaps[0]["step_mm"] == pytest.approx(6.0) and gaps[0]["expected_mm"] == pytest.approx(2.0)
    gap_note = next(n for n in volume.notes if "gap" in n)
    assert "6.00 mm" in gap_note and "expected spacing 2.00 mm" in gap_note
    assert "after slice 3" in gap_note
    assert any(n.startswith("not resampled to axial: the stack has 1 gap") for n in volume.notes)
    json.dumps(volume.geometry)  # the job record can carry it


# --- what doesn't belong -------------------------------------------------------------------


def test_geometry_summary_of_a_clean_shuffled_series(tmp_path: Path) -> None:
    make_ct_series(tmp_path, 9, source=SMALL, spacing=1.5, seed=7)
    volume = series_to_volume_input(sorted(tmp_path.glob("*.dcm")))
    assert _markers(volume.images) == [_r(marker_hu(k)) for k in range(9)]
    geometry = json.loads(json.dumps(volume.geometry))
    assert geometry["plane"] == "axial" and geometry["n_slices_in_stack"] == 9
    assert geometry["spacing_mm"] == pytest.approx([0.6615, 0.6615, 1.5], abs=1e-4)
    assert geometry["gaps"] == [] and geometry["irregular"] is False
    assert geometry["dropped"] == {} and geometry["n_slices_sent"] == 9


def test_two_stacks_in_one_series_keep_the_largest(tmp_path: Path) -> None:
    main, other = make_two_stack_series(tmp_path, 10, 6, other_plane="coronal")
    volume = series_to_volume_input([*other, *main])
    assert len(volume.images) == 10 and volume.plane == "axial"
    assert _markers(volume.images) == [_r(marker_hu(k)) for k in range(10)]
    assert volume.geometry["dropped"] == {"other_stack": 6}
    assert any("outside the main stack (orientation" in n for n in volume.notes)


def test_overlapping_second_acquisition_is_dropped(tmp_path: Path) -> None:
    paths = make_ct_series(tmp_path, 10, source=SMALL, acquisition_number=1)
    repeat = add_acquisition(paths, tmp_path, 6, first_index=2, acquisition_number=2)
    volume = series_to_volume_input([*repeat, *paths])
    assert len(volume.images) == 10
    assert _markers(volume.images) == [_r(marker_hu(k)) for k in range(10)]
    assert volume.geometry["dropped"] == {"other_acquisition": 6}
    assert any("acquisition 2, which overlaps" in n for n in volume.notes)


def test_equal_acquisitions_prefer_original(tmp_path: Path) -> None:
    paths = make_ct_series(tmp_path, 6, source=SMALL, acquisition_number=2)
    derived = add_acquisition(paths, tmp_path, 6, acquisition_number=1, derived=True)
    volume = series_to_volume_input([*derived, *paths])
    assert _markers(volume.images) == [_r(marker_hu(k)) for k in range(6)]
    assert volume.geometry["dropped"] == {"other_acquisition": 6}


def test_adjacent_acquisitions_stay_together(tmp_path: Path) -> None:
    paths = make_ct_series(tmp_path, 6, source=SMALL, acquisition_number=1)
    rest = add_acquisition(paths, tmp_path, 4, first_index=6, acquisition_number=2, marker_shift=0)
    volume = series_to_volume_input([*paths, *rest])
    assert _markers(volume.images) == [_r(marker_hu(k)) for k in range(10)]
    assert _notes_besides_order(volume.notes) == []


def test_localizer_mixed_in_is_counted(tmp_path: Path) -> None:
    paths = make_ct_series(tmp_path, 7, source=SMALL)
    localizer = inject_localizer(paths, tmp_path)
    volume = series_to_volume_input([localizer, *paths])
    assert len(volume.images) == 7 and volume.geometry["dropped"] == {"localizer": 1}


# --- broken input ---------------------------------------------------------------------------


def test_unreadable_slice_is_dropped_and_counted(tmp_path: Path) -> None:
    paths = make_ct_series(tmp_path, 6, source=SMALL)
    paths[2].write_bytes(b"\x00" * 200)  # header destroyed
    volume = series_to_volume_input(paths)
    assert len(volume.images) == 5
    assert volume.geometry["dropped"] == {"unreadable": 1}
    assert any("unreadable" in n and paths[2].name in n for n in volume.notes)
    gap = volume.geometry["gaps"]
    assert isinstance(gap, list) and gap[0]["after_index"] == 1  # and the hole is reported


def test_mixed_sizes_keep_the_larger_stack(tmp_path: Path) -> None:
    big = make_ct_series(tmp_path / "big", 5, source="693_UNCR.dcm", marker=False)
    small = make_ct_series(tmp_path / "small", 3, source=SMALL)
    volume = series_to_volume_input([*small, *big])
    assert len(volume.images) == 5 and volume.images[0].size == (512, 512)
    assert volume.geometry["dropped"] == {"other_stack": 3}
    assert any("matrix 128x128 vs 512x512" in n for n in volume.notes)


def test_slice_without_pixel_data_is_dropped(tmp_path: Path) -> None:
    paths = make_ct_series(tmp_path, 5, source=SMALL)
    ds = pydicom.dcmread(paths[4])
    del ds.PixelData
    ds.save_as(paths[4])
    volume = series_to_volume_input(paths)
    assert len(volume.images) == 4 and volume.geometry["dropped"] == {"no_pixel_data": 1}
    assert any("without pixel data" in n and ds.SOPInstanceUID in n for n in volume.notes)


def test_unsupported_photometric_is_dropped_then_refused(tmp_path: Path) -> None:
    paths = make_ct_series(tmp_path, 4, source=SMALL)
    for path in paths[:1]:
        ds = pydicom.dcmread(path)
        ds.PhotometricInterpretation = "PALETTE COLOR"
        ds.save_as(path)
    volume = series_to_volume_input(paths)
    assert len(volume.images) == 3
    assert volume.geometry["dropped"] == {"unsupported_photometric": 1}
    assert any("PALETTE COLOR" in n for n in volume.notes)
    for path in paths[1:]:
        ds = pydicom.dcmread(path)
        ds.PhotometricInterpretation = "PALETTE COLOR"
        ds.save_as(path)
    with pytest.raises(ImagingError, match=r"no usable slice.*unsupported_photometric: 4"):
        series_to_volume_input(paths)
