"""Lab-report documents: fixtures that pass dciodvfy, and their pages read back legibly.

Round trips under the suite's strict pydicom reading: draw a report → wrap it
as Encapsulated PDF or scanned Secondary Capture → write → read → render, and
check the pages by their pixels (white paper, dark text where the table is).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.uid import (
    EncapsulatedPDFStorage,
    MultiFrameTrueColorSecondaryCaptureImageStorage,
    SecondaryCaptureImageStorage,
)

from fixtures.documents import (
    PAGE_DPI,
    PAGE_INCHES,
    TABLE_BOX,
    draw_lab_report_page,
    make_encapsulated_pdf,
    make_lab_report_pdf,
    make_scanned_document,
)
from fixtures.series import make_ct_series
from node.imaging.document import DocumentInput, document_to_pages
from node.imaging.errors import ImagingError
from tests.dicom_tools import dciodvfy_errors


def _grey(page: Image.Image) -> np.ndarray:
    return np.asarray(page.convert("L"))


def _assert_lab_page(page: Image.Image, *, scale: float = 1.0) -> None:
    """Mostly white paper; dark text inside the table box; a blank top margin."""
    grey = _grey(page)
    assert page.mode == "RGB"
    assert (grey > 200).mean() > 0.9, "page should be mostly white"
    left, top, right, bottom = (round(v * scale) for v in TABLE_BOX)
    table = grey[top:bottom, left:right]
    # 9 rows of 26 px text over the table box: a few % of its pixels are ink.
    assert (table < 100).mean() > 0.01, "no dark text where the lab table was drawn"
    assert (grey[: round(60 * scale)] > 200).all(), "top margin should be blank"


def test_lab_report_pdf_is_a_pdf(tmp_path: Path) -> None:
    path = make_lab_report_pdf(tmp_path / "report.pdf", pages=2)
    data = path.read_bytes()
    assert data.startswith(b"%PDF-")
    assert data.rstrip().endswith(b"%%EOF")


def _unpadded(result: DocumentInput) -> list[Image.Image]:
    """Each page without the zero bars that square it."""
    return [
        page.crop((pad.left, pad.top, page.width - pad.right, page.height - pad.bottom))
        for page, pad in zip(result.pages, result.paddings, strict=True)
    ]


def test_pages_are_zero_padded_to_centred_squares(tmp_path: Path) -> None:
    """As the container pads every image: a portrait page between black bars, dw // 2 left."""
    ds = pydicom.dcmread(make_encapsulated_pdf(tmp_path))
    result = document_to_pages([ds])
    (page,) = result.pages
    (pad,) = result.paddings
    width, height = page.width - pad.left - pad.right, page.height - pad.top - pad.bottom
    assert page.width == page.height == height > width  # a portrait page: bars left and right
    dw = height - width
    assert (pad.top, pad.bottom, pad.left, pad.right) == (0, 0, dw // 2, dw - dw // 2)
    pixels = np.asarray(page)
    assert pixels[:, : pad.left].max() == 0 and pixels[:, page.width - pad.right :].max() == 0
    assert pixels[:, pad.left : pad.left + 5].min() > 200  # the page's own white margin


def test_encapsulated_pdf_round_trip(tmp_path: Path) -> None:
    path = make_encapsulated_pdf(tmp_path, pages=3, study_uid="1.2.3.4")
    assert dciodvfy_errors(path) == []

    ds = pydicom.dcmread(path)  # strict reading (conftest)
    assert ds.SOPClassUID == EncapsulatedPDFStorage
    assert ds.Modality == "DOC"
    assert ds.StudyInstanceUID == "1.2.3.4"
    assert ds.MIMETypeOfEncapsulatedDocument == "application/pdf"
    assert len(ds.EncapsulatedDocument) % 2 == 0
    assert ds.EncapsulatedDocument[: ds.EncapsulatedDocumentLength].rstrip().endswith(b"%%EOF")

    result = document_to_pages([path])
    assert len(result.pages) == 3
    assert result.sop_instance_uids == [ds.SOPInstanceUID] * 3
    assert result.notes == []
    expected = (PAGE_INCHES[0] * PAGE_DPI, PAGE_INCHES[1] * PAGE_DPI)
    for page in _unpadded(result):
        # PDFium rounds the bitmap size up; a pixel of slack either way.
        assert abs(page.width - expected[0]) <= 1 and abs(page.height - expected[1]) <= 1
        _assert_lab_page(page)


@pytest.mark.parametrize("dpi", [100, 180])  # 180 dpi: 1980 px, under the 2048 cap
def test_pdf_page_size_follows_dpi(tmp_path: Path, dpi: int) -> None:
    ds = pydicom.dcmread(make_encapsulated_pdf(tmp_path))
    (page,) = _unpadded(document_to_pages([ds], dpi=dpi))
    assert abs(page.width - PAGE_INCHES[0] * dpi) <= 1
    assert abs(page.height - PAGE_INCHES[1] * dpi) <= 1
    _assert_lab_page(page, scale=dpi / PAGE_DPI)


def test_pdf_longer_side_is_capped(tmp_path: Path) -> None:
    ds = pydicom.dcmread(make_encapsulated_pdf(tmp_path))
    result = document_to_pages([ds], dpi=300, max_side=1000)
    (page,) = result.pages  # the padded square is within the cap too
    assert max(page.size) <= 1001
    assert any("capped at 1000 px" in note and ds.SOPInstanceUID in note for note in result.notes)


def test_scanned_rgb_secondary_capture(tmp_path: Path) -> None:
    path = make_scanned_document(tmp_path)
    assert dciodvfy_errors(path) == []
    ds = pydicom.dcmread(path)
    assert ds.SOPClassUID == SecondaryCaptureImageStorage
    assert ds.PhotometricInterpretation == "RGB"

    result = document_to_pages([path])
    (page,) = _unpadded(result)
    assert page.size == (ds.Columns, ds.Rows)
    assert result.sop_instance_uids == [ds.SOPInstanceUID]
    _assert_lab_page(page)
    # Colour scans are display values: the red channel is the drawn page as is.
    assert np.array_equal(np.asarray(page)[..., 0], np.asarray(draw_lab_report_page()))


def test_scanned_monochrome1_is_inverted_to_black_on_white(tmp_path: Path) -> None:
    path = make_scanned_document(tmp_path, monochrome=True)
    assert dciodvfy_errors(path) == []
    ds = pydicom.dcmread(path)
    assert ds.PhotometricInterpretation == "MONOCHROME2"
    ds.PhotometricInterpretation = "MONOCHROME1"  # same page stored white-is-0
    ds.PixelData = (255 - ds.pixel_array).astype(np.uint8).tobytes()

    (page,) = _unpadded(document_to_pages([ds]))
    _assert_lab_page(page)
    assert np.array_equal(_grey(page), np.asarray(draw_lab_report_page()))


def test_scanned_windowed_monochrome_uses_the_window(tmp_path: Path) -> None:
    ds = pydicom.dcmread(make_scanned_document(tmp_path, monochrome=True))
    # A window that maps everything ≥ 128 to white and < 128 to black.
    ds.WindowCenter = 128
    ds.WindowWidth = 2
    (page,) = _unpadded(document_to_pages([ds]))
    values = set(np.unique(_grey(page)).tolist())
    assert values <= {0, 255}
    _assert_lab_page(page)


def test_multiframe_scan_pages_and_max_pages(tmp_path: Path) -> None:
    path = make_scanned_document(tmp_path, pages=3)
    assert dciodvfy_errors(path) == []
    ds = pydicom.dcmread(path)
    assert ds.SOPClassUID == MultiFrameTrueColorSecondaryCaptureImageStorage
    assert ds.NumberOfFrames == 3

    all_pages = document_to_pages([ds])
    assert len(all_pages.pages) == 3 and all_pages.notes == []
    for page in _unpadded(all_pages):
        _assert_lab_page(page)

    capped = document_to_pages([ds], max_pages=2)
    assert len(capped.pages) == 2
    assert capped.notes == ["3 pages in 1 instance(s); kept the first 2 (max_pages=2)"]


def test_max_pages_counts_over_instances(tmp_path: Path) -> None:
    pdf = make_encapsulated_pdf(tmp_path / "pdf", pages=3)
    scan = make_scanned_document(tmp_path / "scan")
    result = document_to_pages([pdf, scan], max_pages=2)
    pdf_uid = pydicom.dcmread(pdf).SOPInstanceUID
    assert result.sop_instance_uids == [pdf_uid, pdf_uid]
    assert result.notes == ["4 pages in 2 instance(s); kept the first 2 (max_pages=2)"]

    both = document_to_pages([scan, pdf])
    assert len(both.pages) == 4
    assert both.sop_instance_uids[0] == pydicom.dcmread(scan).SOPInstanceUID


@pytest.mark.parametrize(
    ("keep_length", "reason"),
    [(True, "PDF can't be opened"), (False, "truncated document")],
)
def test_truncated_pdf_raises_naming_the_instance(
    tmp_path: Path, keep_length: bool, reason: str
) -> None:
    ds = pydicom.dcmread(make_encapsulated_pdf(tmp_path))
    half = len(ds.EncapsulatedDocument) // 4 * 2
    ds.EncapsulatedDocument = ds.EncapsulatedDocument[:half]
    if keep_length:
        ds.EncapsulatedDocumentLength = half
    with pytest.raises(ImagingError, match=reason) as caught:
        document_to_pages([ds])
    assert ds.SOPInstanceUID in str(caught.value)


@pytest.mark.parametrize(
    ("pdf_bytes", "mime", "reason"),
    [
        (b"", "application/pdf", "EncapsulatedDocument is empty"),
        (b"<ClinicalDocument/>\n", "application/pdf", "not a PDF"),
        (None, "text/xml", "unsupported MIMETypeOfEncapsulatedDocument 'text/xml'"),
    ],
)
def test_bad_encapsulated_document_raises(
    tmp_path: Path, pdf_bytes: bytes | None, mime: str, reason: str
) -> None:
    ds = pydicom.dcmread(make_encapsulated_pdf(tmp_path))
    if pdf_bytes is not None:
        ds.EncapsulatedDocument = pdf_bytes
        del ds.EncapsulatedDocumentLength
    ds.MIMETypeOfEncapsulatedDocument = mime
    with pytest.raises(ImagingError, match=reason) as caught:
        document_to_pages([ds])
    assert ds.SOPInstanceUID in str(caught.value)


def test_ct_slice_is_not_a_document(tmp_path: Path) -> None:
    (path,) = make_ct_series(tmp_path, n_slices=1, source="CT_small.dcm", marker=False)
    uid = pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID
    with pytest.raises(ImagingError, match="not a document") as caught:
        document_to_pages([path])
    assert uid in str(caught.value)
    assert "CT Image Storage" in str(caught.value)


def test_unreadable_file_and_no_input(tmp_path: Path) -> None:
    junk = tmp_path / "junk.dcm"
    junk.write_bytes(b"not dicom at all")
    with pytest.raises(ImagingError, match="junk.dcm"):
        document_to_pages([junk])
    with pytest.raises(ImagingError, match="no document instances"):
        document_to_pages([])
    with pytest.raises(ValueError, match="max_pages"):
        document_to_pages([junk], max_pages=0)
