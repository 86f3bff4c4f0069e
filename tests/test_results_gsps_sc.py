"""GSPS and burned-in Secondary Capture of the model's boxes on the real chest CR."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom import Dataset
from pydicom.uid import (
    ExplicitVRLittleEndian,
    GrayscaleSoftcopyPresentationStateStorage,
    SecondaryCaptureImageStorage,
)

from fixtures.series import make_cr_study
from node.imaging.radiograph import RadiographImage, radiograph_to_image
from node.inference.answers import Box
from node.results.author import ResultAuthor
from node.results.boxes import SourceBox, box_tracking_uid, map_boxes
from node.results.disclaimer import TEST_MODEL_BANNER
from node.results.gsps import build_gsps
from node.results.sc import build_burned_in_sc
from tests.dicom_tools import dciodvfy_errors, write_tmp

MODEL = "google/medgemma-1.5-4b-it"


@pytest.fixture(scope="module")
def cr(tmp_path_factory: pytest.TempPathFactory) -> Dataset:
    return pydicom.dcmread(make_cr_study(tmp_path_factory.mktemp("cr")))


@pytest.fixture(scope="module")
def cr_image(cr: Dataset) -> RadiographImage:
    return radiograph_to_image(cr)


@pytest.fixture(scope="module")
def boxes(cr_image: RadiographImage) -> list[SourceBox]:
    kept, dropped = map_boxes(
        [
            Box("Pneumothorax", y0=100, x0=550, y1=300, x1=900),
            Box("pleural effusion", y0=700, x0=0, y1=900, x1=300),  # clipped on the left
        ],
        cr_image,
    )
    assert dropped == []
    return kept


# --- GSPS ---------------------------------------------------------------------------------


def test_gsps_validates_and_keeps_the_source_view(
    cr: Dataset, boxes: list[SourceBox], tmp_path: Path
) -> None:
    gsps = build_gsps(cr, boxes, author=ResultAuthor(MODEL, False))
    path = write_tmp(gsps, tmp_path)
    assert dciodvfy_errors(path) == []
    back = pydicom.dcmread(path)
    assert back.SOPClassUID == GrayscaleSoftcopyPresentationStateStorage
    assert back.StudyInstanceUID == cr.StudyInstanceUID
    assert back.PatientID == cr.PatientID
    assert back.BodyPartExamined == "CHEST"
    # MONOCHROME1: INVERSE keeps bone white, as the source shows without the state.
    assert cr.PhotometricInterpretation == "MONOCHROME1"
    assert back.PresentationLUTShape == "INVERSE"
    [voi] = back.SoftcopyVOILUTSequence
    assert float(voi.WindowCenter) == float(cr.WindowCenter)
    assert float(voi.WindowWidth) == float(cr.WindowWidth)
    assert back.ContentLabel == "AI FINDINGS"
    [referenced] = back.ReferencedSeriesSequence[0].ReferencedImageSequence
    assert referenced.ReferencedSOPInstanceUID == cr.SOPInstanceUID


def test_gsps_draws_closed_rectangles_and_labels(
    cr: Dataset, boxes: list[SourceBox], tmp_path: Path
) -> None:
    back = pydicom.dcmread(
        write_tmp(build_gsps(cr, boxes, author=ResultAuthor(MODEL, False)), tmp_path)
    )
    [annotation] = back.GraphicAnnotationSequence
    [layer] = back.GraphicLayerSequence
    assert annotation.GraphicLayer == layer.GraphicLayer
    graphics = annotation.GraphicObjectSequence
    assert len(graphics) == len(boxes)
    for graphic, box in zip(graphics, boxes, strict=True):
        assert graphic.GraphicType == "POLYLINE"
        assert graphic.GraphicAnnotationUnits == "PIXEL"
        assert graphic.NumberOfGraphicPoints == 5
        points = np.array(graphic.GraphicData, dtype=float).reshape(-1, 2)
        np.testing.assert_allclose(points, box.corners(), atol=1e-3)
        # The SR's measurement group for this box carries the same UID.
        assert graphic.TrackingUID == box_tracking_uid(cr.SOPInstanceUID, box)
    labels = [text.UnformattedTextValue for text in annotation.TextObjectSequence]
    assert labels[0].startswith("NOT FOR DIAGNOSTIC USE")
    assert labels[1:] == ["Pneumothorax", "pleural effusion"]


def test_gsps_marks_a_test_model(cr: Dataset, boxes: list[SourceBox], tmp_path: Path) -> None:
    gsps = build_gsps(cr, boxes, author=ResultAuthor("tiny", True))
    path = write_tmp(gsps, tmp_path)
    assert dciodvfy_errors(path) == []
    back = pydicom.dcmread(path)
    assert back.ContentLabel == "AI TEST MODEL"
    assert back.SeriesDescription.startswith("TEST MODEL")
    texts = [t.UnformattedTextValue for t in back.GraphicAnnotationSequence[0].TextObjectSequence]
    assert texts[0].startswith(TEST_MODEL_BANNER)


def test_gsps_refuses_a_box_outside_the_image(cr: Dataset) -> None:
    with pytest.raises(ValueError, match="not inside"):
        build_gsps(cr, [SourceBox("x", 0, 0, 5000, 10)], author=ResultAuthor(MODEL, False))


# --- burned-in Secondary Capture ---------------------------------------------------------


def test_sc_validates_and_is_marked_burned_in(
    cr: Dataset, cr_image: RadiographImage, boxes: list[SourceBox], tmp_path: Path
) -> None:
    sc = build_burned_in_sc(
        cr,
        cr_image,
        boxes,
        impression="Right pneumothorax.",
        author=ResultAuthor(MODEL, False),
    )
    assert sc.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    path = write_tmp(sc, tmp_path)
    assert dciodvfy_errors(path) == []
    back = pydicom.dcmread(path)
    assert back.SOPClassUID == SecondaryCaptureImageStorage
    assert back.BurnedInAnnotation == "YES"
    assert back.BodyPartExamined == "CHEST"
    assert back.StudyInstanceUID == cr.StudyInstanceUID
    assert back.PhotometricInterpretation == "RGB"
    assert (back.BitsAllocated, back.SamplesPerPixel) == (8, 3)
    assert back.Columns == cr.Columns
    assert back.Rows > cr.Rows  # the banner is a band above the radiograph
    assert "NOT FOR DIAGNOSTIC USE" in back.ImageComments
    assert "Right pneumothorax." in back.ImageComments


def test_sc_draws_boxes_at_source_positions(
    cr: Dataset, cr_image: RadiographImage, boxes: list[SourceBox]
) -> None:
    sc = build_burned_in_sc(cr, cr_image, boxes, impression="x", author=ResultAuthor(MODEL, False))
    pixels = sc.pixel_array
    band = int(sc.Rows) - int(cr.Rows)
    box = boxes[0]
    # The box's left edge, half-way down, is amber; the source there is grey.
    row, column = band + int((box.top + box.bottom) / 2), int(box.left) + 1
    assert tuple(pixels[row, column]) == (255, 200, 0)
    # Away from any box and the banner, the pixels are the model input's.
    left = cr_image.padding.left
    source_rgb = np.asarray(cr_image.image)[:, left : left + cr.Columns]
    np.testing.assert_array_equal(pixels[band + 1900, 1000], source_rgb[1900, 1000])


def test_sc_from_a_pil_picture_marks_a_test_model(
    cr: Dataset, boxes: list[SourceBox], tmp_path: Path
) -> None:
    picture = Image.new("RGB", (int(cr.Columns), int(cr.Rows)), (90, 90, 90))
    sc = build_burned_in_sc(
        cr, picture, boxes, impression="Normal.", author=ResultAuthor("tiny", True)
    )
    path = write_tmp(sc, tmp_path)
    assert dciodvfy_errors(path) == []
    back = pydicom.dcmread(path)
    assert back.ImageComments.startswith(TEST_MODEL_BANNER)
    assert back.SeriesDescription.startswith("TEST MODEL")


def test_sc_refuses_a_picture_of_another_size(cr: Dataset) -> None:
    with pytest.raises(ValueError, match="source"):
        build_burned_in_sc(
            cr,
            Image.new("RGB", (10, 10)),
            [],
            impression="x",
            author=ResultAuthor(MODEL, False),
        )
