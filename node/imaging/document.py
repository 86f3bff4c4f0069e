"""Lab reports and other documents → the page images MedGemma 1.5 reads.

MedGemma's lab-report task takes document *page images* and extracts the tests
into JSON, so every page must be legible: small print survives at ~150 dpi,
which is what we render at. Two kinds of DICOM carry a report:

* **Encapsulated PDF** (what a LIS or a PDF printer-to-PACS sends): the PDF
  bytes are rendered page by page with PDFium (``pypdfium2``), the engine
  Chromium uses, so pages look as they would in a browser.
* **Scanned pages** (Secondary Capture variants, or any image whose Modality is
  DOC or OT): every frame is a page. Grey-scale frames go through the same
  Modality LUT → VOI → 8 bit → MONOCHROME1 inversion as radiographs, so a
  windowed or inverted scan reads as black text on white.

Pages are kept in the order of the inputs (and page / frame order within each);
the caller decides which instance comes first. The model resizes every image
to 896², so pages whose longer side would exceed ``max_side`` are made smaller
here (and it is noted): more pixels than that only cost memory. Every page is
then zero-padded to a square, centred, as the official container pads every
image (:mod:`node.imaging.square`): a portrait page keeps its proportions
between black bars instead of being stretched sideways.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pypdfium2 as pdfium
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.uid import (
    UID,
    EncapsulatedCDAStorage,
    EncapsulatedMTLStorage,
    EncapsulatedOBJStorage,
    EncapsulatedPDFStorage,
    EncapsulatedSTLStorage,
    MultiFrameGrayscaleByteSecondaryCaptureImageStorage,
    MultiFrameGrayscaleWordSecondaryCaptureImageStorage,
    MultiFrameSingleBitSecondaryCaptureImageStorage,
    MultiFrameTrueColorSecondaryCaptureImageStorage,
    SecondaryCaptureImageStorage,
)

from node.imaging.dicom_io import decode_pixels, read_dataset
from node.imaging.errors import ImagingError

# One implementation of the grey-scale display pipeline for the whole stage.
from node.imaging.radiograph import _colour_to_rgb8, _greyscale_to_8bit
from node.imaging.square import Padding, pad_to_square

__all__ = [
    "DEFAULT_DPI",
    "DEFAULT_MAX_PAGES",
    "DEFAULT_MAX_SIDE",
    "DocumentInput",
    "document_to_pages",
]

logger = logging.getLogger(__name__)

DEFAULT_DPI = 150  # small print in a lab table is still legible at 150 dpi
DEFAULT_MAX_PAGES = 8  # each page is 256 image tokens; reports rarely run longer
DEFAULT_MAX_SIDE = 2048  # the processor resizes to 896²; beyond this only memory grows
POINTS_PER_INCH = 72.0  # PDF user-space unit

PDF_MIME_TYPE = "application/pdf"
# PDF 1.7 (ISO 32000-1, 7.5.2) lets the header sit anywhere in the first 1024 bytes.
_PDF_HEADER = b"%PDF-"
_PDF_HEADER_WINDOW = 1024

_ENCAPSULATED_DOCUMENT_CLASSES = frozenset(
    {
        EncapsulatedPDFStorage,
        EncapsulatedCDAStorage,
        EncapsulatedSTLStorage,
        EncapsulatedOBJStorage,
        EncapsulatedMTLStorage,
    }
)
_SECONDARY_CAPTURE_CLASSES = frozenset(
    {
        SecondaryCaptureImageStorage,
        MultiFrameSingleBitSecondaryCaptureImageStorage,
        MultiFrameGrayscaleByteSecondaryCaptureImageStorage,
        MultiFrameGrayscaleWordSecondaryCaptureImageStorage,
        MultiFrameTrueColorSecondaryCaptureImageStorage,
    }
)
# Modalities under which scanners and document converters file pages.
_DOCUMENT_MODALITIES = frozenset({"DOC", "OT"})
_GREYSCALE = frozenset({"MONOCHROME1", "MONOCHROME2"})
# pydicom converts YBR_* to RGB while decoding, so all of these arrive as RGB.
_COLOUR = frozenset({"RGB", "YBR_FULL", "YBR_FULL_422", "YBR_ICT", "YBR_RCT"})
_PIXEL_DATA_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")

# PDFium is not thread-safe, not even across separate documents (pypdfium2's
# docs say so); the pipeline may convert two jobs at once, so every PDFium call
# goes through this lock.
_PDFIUM_LOCK = threading.Lock()


@dataclass(frozen=True)
class DocumentInput:
    """The pages of one or more document instances, ready for the model.

    ``pages[k]`` is an RGB image rendered from ``sop_instance_uids[k]``; an
    instance with several pages appears once per page. ``notes`` says what
    deviated from the nominal path (pages dropped, resolution capped…), for
    the job record; it never contains patient data.
    """

    pages: list[Image.Image]  # square: the page centred between zero bars
    sop_instance_uids: list[str]
    notes: list[str]
    paddings: list[Padding] = field(default_factory=list)  # per page, where the page sits


def document_to_pages(
    datasets_or_paths: Sequence[Dataset | Path],
    *,
    dpi: int = DEFAULT_DPI,
    max_pages: int = DEFAULT_MAX_PAGES,
    max_side: int = DEFAULT_MAX_SIDE,
) -> DocumentInput:
    """Render document instances (Encapsulated PDF, scanned pages) into RGB page images.

    ``datasets_or_paths`` are data sets or DICOM file paths in reading order. PDF pages
    are rendered at ``dpi`` (scanned pages keep theirs). Pages beyond ``max_pages``,
    counted over all inputs, are dropped and noted; a page whose longer side exceeds
    ``max_side`` pixels is scaled down (a PDF rendered at a lower resolution) and noted.

    Raises
    ------
    ImagingError
        No inputs, an input that is not a document (e.g. a CT slice), an
        encapsulated document that is empty, truncated, not a PDF or not
        renderable, or pixel data that can't be decoded. The message names the
        SOPInstanceUID (or the file) and the reason.
    ValueError
        ``dpi``, ``max_pages`` or ``max_side`` is not positive.
    """
    for name, value in (("dpi", dpi), ("max_pages", max_pages), ("max_side", max_side)):
        if value < 1:
            raise ValueError(f"{name} must be ≥ 1, got {value}")
    if not datasets_or_paths:
        raise ImagingError("no document instances given")

    pages: list[Image.Image] = []
    uids: list[str] = []
    notes: list[str] = []
    total = 0
    for source in datasets_or_paths:
        ds = source if isinstance(source, Dataset) else read_dataset(source)
        uid = str(ds.get("SOPInstanceUID", "<no SOPInstanceUID>"))
        # Pages past the cap are counted (and their instance validated) but
        # never rendered or decoded.
        keep = max_pages - len(pages)
        if _is_encapsulated_document(ds):
            page_count, rendered = _pdf_pages(ds, uid, dpi, max_side, keep, notes)
        elif _is_document_image(ds):
            page_count, rendered = _image_pages(ds, uid, max_side, keep, notes)
        else:
            raise ImagingError(
                f"SOP instance {uid}: not a document (SOP class "
                f"{_sop_class_name(ds)}, Modality {ds.get('Modality', '<none>')}); "
                "expected Encapsulated PDF or a scanned page (Secondary Capture, "
                f"Modality {' or '.join(sorted(_DOCUMENT_MODALITIES))})"
            )
        pages.extend(rendered)
        uids.extend([uid] * len(rendered))
        total += page_count

    if total > len(pages):
        notes.append(
            f"{total} pages in {len(datasets_or_paths)} instance(s); "
            f"kept the first {len(pages)} (max_pages={max_pages})"
        )
        logger.warning("document: %d of %d pages kept (max_pages)", len(pages), total)
    logger.debug("document: %d page(s) from %d instance(s)", len(pages), len(datasets_or_paths))
    squares = [pad_to_square(np.asarray(page.convert("RGB"))) for page in pages]
    return DocumentInput(
        pages=[Image.fromarray(square) for square, _ in squares],
        sop_instance_uids=uids,
        notes=notes,
        paddings=[padding for _, padding in squares],
    )


# --- classification ---------------------------------------------------------------


def _is_encapsulated_document(ds: Dataset) -> bool:
    return _sop_class(ds) in _ENCAPSULATED_DOCUMENT_CLASSES or "EncapsulatedDocument" in ds


def _is_document_image(ds: Dataset) -> bool:
    if not any(keyword in ds for keyword in _PIXEL_DATA_KEYWORDS):
        return False
    modality = str(ds.get("Modality", "")).strip().upper()
    return _sop_class(ds) in _SECONDARY_CAPTURE_CLASSES or modality in _DOCUMENT_MODALITIES


def _sop_class(ds: Dataset) -> UID | None:
    value = ds.get("SOPClassUID")
    return UID(str(value)) if value else None


def _sop_class_name(ds: Dataset) -> str:
    sop_class = _sop_class(ds)
    return sop_class.name if sop_class is not None else "<none>"


# --- Encapsulated PDF -------------------------------------------------------------


def _pdf_pages(
    ds: Dataset, uid: str, dpi: int, max_side: int, keep: int, notes: list[str]
) -> tuple[int, list[Image.Image]]:
    """Page count of the encapsulated PDF and its first ``keep`` pages, rendered."""
    data = _pdf_bytes(ds, uid)
    images: list[Image.Image] = []
    with _PDFIUM_LOCK:
        try:
            document = pdfium.PdfDocument(data)
        except pdfium.PdfiumError as exc:  # corrupt, truncated, encrypted
            raise ImagingError(f"SOP instance {uid}: PDF can't be opened: {exc}") from exc
        try:
            page_count = len(document)
            if page_count == 0:
                raise ImagingError(f"SOP instance {uid}: PDF has no pages")
            for index in range(min(page_count, keep)):
                images.append(_render_page(document, index, uid, dpi, max_side, notes))
        finally:
            document.close()
    return page_count, images


def _pdf_bytes(ds: Dataset, uid: str) -> bytes:
    """The PDF inside the instance, with the OB pad byte cut off, after sanity checks."""
    sop_class = _sop_class(ds)
    if sop_class in _ENCAPSULATED_DOCUMENT_CLASSES and sop_class != EncapsulatedPDFStorage:
        raise ImagingError(
            f"SOP instance {uid}: unsupported encapsulated document ({_sop_class_name(ds)}); "
            "only Encapsulated PDF is rendered"
        )
    mime = str(ds.get("MIMETypeOfEncapsulatedDocument", "")).strip().lower()
    if mime != PDF_MIME_TYPE:
        raise ImagingError(
            f"SOP instance {uid}: unsupported MIMETypeOfEncapsulatedDocument {mime!r} "
            f"(supported: {PDF_MIME_TYPE})"
        )
    data = bytes(ds.get("EncapsulatedDocument") or b"")
    if not data:
        raise ImagingError(f"SOP instance {uid}: EncapsulatedDocument is empty")
    length = ds.get("EncapsulatedDocumentLength")
    if length is not None:
        # The declared length is the PDF without the even-length pad; a value
        # beyond the bytes present means the document was cut off in transit.
        if int(length) > len(data):
            raise ImagingError(
                f"SOP instance {uid}: EncapsulatedDocumentLength {int(length)} exceeds the "
                f"{len(data)} bytes present (truncated document)"
            )
        data = data[: int(length)]
    if _PDF_HEADER not in data[:_PDF_HEADER_WINDOW]:
        raise ImagingError(
            f"SOP instance {uid}: EncapsulatedDocument is not a PDF (no %PDF- header)"
        )
    return data


def _render_page(
    document: pdfium.PdfDocument,
    index: int,
    uid: str,
    dpi: int,
    max_side: int,
    notes: list[str],
) -> Image.Image:
    """Page ``index`` as RGB at ``dpi``, or smaller if that would exceed ``max_side``.

    The caller holds ``_PDFIUM_LOCK``.
    """
    page = document[index]
    try:
        width_pt, height_pt = page.get_size()
        scale = dpi / POINTS_PER_INCH
        if max(width_pt, height_pt) * scale > max_side:
            scale = max_side / max(width_pt, height_pt)
            notes.append(
                f"SOP instance {uid} page {index + 1}: rendered at "
                f"{scale * POINTS_PER_INCH:.0f} dpi instead of {dpi} "
                f"(longer side capped at {max_side} px)"
            )
        # PDFium fills the page white before drawing, so pages with a transparent
        # background still come out as black text on white.
        bitmap = page.render(scale=scale)
        try:
            image: Image.Image = bitmap.to_pil().convert("RGB")
        finally:
            bitmap.close()
    except pdfium.PdfiumError as exc:
        raise ImagingError(
            f"SOP instance {uid}: PDF page {index + 1} can't be rendered: {exc}"
        ) from exc
    finally:
        page.close()
    logger.debug("document %s page %d: %dx%d px", uid, index + 1, *image.size)
    return image


# --- scanned pages ----------------------------------------------------------------


def _image_pages(
    ds: Dataset, uid: str, max_side: int, keep: int, notes: list[str]
) -> tuple[int, list[Image.Image]]:
    """Frame count of a scanned document image and its first ``keep`` frames as RGB pages."""
    photometric = str(ds.get("PhotometricInterpretation", "")).strip().upper()
    if photometric not in _GREYSCALE | _COLOUR:
        raise ImagingError(
            f"SOP instance {uid}: unsupported PhotometricInterpretation {photometric!r} "
            f"(supported: {', '.join(sorted(_GREYSCALE | _COLOUR))})"
        )
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    images = [
        _frame_page(ds, uid, index, frames, photometric, max_side, notes)
        for index in range(min(frames, keep))
    ]
    return frames, images


def _frame_page(
    ds: Dataset,
    uid: str,
    index: int,
    frames: int,
    photometric: str,
    max_side: int,
    notes: list[str],
) -> Image.Image:
    """Frame ``index`` as an 8-bit RGB page, scaled down past ``max_side``."""
    # One frame at a time: a multi-frame scan is never decoded whole.
    raw = decode_pixels(
        ds, f"SOP instance {uid}: frame {index + 1}", index=index if frames > 1 else None
    )
    if photometric in _COLOUR:
        rgb = _colour_to_rgb8(raw, ds)
    else:
        grey8, _, _ = _greyscale_to_8bit(raw, ds, uid, notes)
        rgb = np.repeat(grey8[..., np.newaxis], 3, axis=-1)
    image = Image.fromarray(np.ascontiguousarray(rgb, dtype=np.uint8))
    if max(image.size) > max_side:
        factor = max_side / max(image.size)
        size = (max(1, round(image.width * factor)), max(1, round(image.height * factor)))
        notes.append(
            f"SOP instance {uid} frame {index + 1}: {image.width}x{image.height} scaled "
            f"to {size[0]}x{size[1]} (longer side capped at {max_side} px)"
        )
        # LANCZOS keeps thin strokes of small print; nearest would break them up.
        image = image.resize(size, Image.Resampling.LANCZOS)
    return image
