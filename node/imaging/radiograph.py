"""Projection radiographs (CR, DX, DX-like SC) → the 8-bit square RGB image MedGemma saw.

The official serving container (``python/serving/``) turns a radiograph into a model
input by applying the Modality LUT, then the first WindowCenter/WindowWidth when both
are present (it never consults a VOI LUT Sequence), inverting MONOCHROME1, rounding to
8 bits (``np.round``, then the cast) and zero-padding to a square. We follow that
order, with pydicom doing the LUT and window arithmetic (LINEAR, LINEAR_EXACT,
SIGMOID). A VOI LUT Sequence is used only when the header gives no window, and min–max
only when it gives neither; :attr:`RadiographImage.voi` says which one was used.

The image is *not* resized: the model's processor resizes to 896×896 itself,
and keeping the source resolution lets localisation boxes map back to source
pixels with only the padding offsets.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.pixels.processing import apply_modality_lut, apply_voi_lut, apply_windowing

from node.imaging.dicom_io import decode_pixels, read_dataset
from node.imaging.errors import ImagingError
from node.imaging.square import Padding, pad_to_square

logger = logging.getLogger(__name__)

# Grey-scale interpretations get the LUT pipeline; colour ones are already display
# values (pydicom converts YBR_* to RGB while decoding), so they are only padded.
_GREYSCALE = frozenset({"MONOCHROME1", "MONOCHROME2"})
_COLOUR = frozenset({"RGB", "YBR_FULL", "YBR_FULL_422", "YBR_ICT", "YBR_RCT"})
_PIXEL_DATA_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")


@dataclass(frozen=True)
class RadiographImage:
    """A radiograph as the model input, plus what is needed to map boxes back.

    ``image`` is ``side × side`` with ``side = max(source_rows, source_columns)``;
    the source pixels sit at ``[padding.top : padding.top + source_rows,
    padding.left : padding.left + source_columns]``.
    """

    image: Image.Image
    source_rows: int
    source_columns: int
    padding: Padding  # the zeros around the source in the square, on all four sides
    # (center, width) of the window applied; None when a VOI LUT sequence or the
    # min–max fallback produced the grey levels.
    window: tuple[float, float] | None
    # Which VOI made the grey levels: "window" (the first WindowCenter/WindowWidth, as
    # the official container), "voi_lut_sequence" (no window in the header), "min_max"
    # (neither, or a window pydicom refuses), or "none" (a colour image).
    voi: str = "window"
    # Anything that deviated from the nominal path (ignored window, colour input…),
    # for the job record.
    notes: tuple[str, ...] = ()

    def source_picture(self) -> Image.Image:
        """The source-sized RGB picture: the model input without its square padding."""
        top, left = self.padding.top, self.padding.left
        return self.image.crop((left, top, left + self.source_columns, top + self.source_rows))


def radiograph_to_image(source: Dataset | Path | str) -> RadiographImage:
    """Convert one single-frame radiograph into MedGemma's 8-bit square RGB input.

    Parameters
    ----------
    source
        A dataset with pixel data, or the path of a DICOM file.

    Raises
    ------
    ImagingError
        No pixel data, multi-frame, an unsupported PhotometricInterpretation, or
        pixel data that can't be decoded; the message names the SOPInstanceUID.
    """
    ds = source if isinstance(source, Dataset) else read_dataset(source)
    uid = str(ds.get("SOPInstanceUID", "<no SOPInstanceUID>"))
    photometric = str(ds.get("PhotometricInterpretation", "")).strip().upper()

    if not any(keyword in ds for keyword in _PIXEL_DATA_KEYWORDS):
        raise ImagingError(f"SOP instance {uid}: no pixel data")
    if photometric not in _GREYSCALE | _COLOUR:
        raise ImagingError(
            f"SOP instance {uid}: unsupported PhotometricInterpretation {photometric!r} "
            f"(supported: {', '.join(sorted(_GREYSCALE | _COLOUR))})"
        )
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames != 1:
        raise ImagingError(
            f"SOP instance {uid}: {frames} frames; only single-frame radiographs are supported"
        )

    raw = decode_pixels(ds, f"SOP instance {uid}: pixel data")

    notes: list[str] = []
    window: tuple[float, float] | None = None
    if photometric in _COLOUR:
        rgb = _colour_to_rgb8(raw, ds)
        voi = "none"
        notes.append(f"colour image ({photometric}) used as is, no VOI applied")
    else:
        grey8, window, voi = _greyscale_to_8bit(raw, ds, uid, notes)
        rgb = np.repeat(grey8[..., np.newaxis], 3, axis=-1)

    rows, columns = int(rgb.shape[0]), int(rgb.shape[1])
    square, padding = pad_to_square(rgb)
    logger.debug("radiograph %s: %dx%d → %d² (VOI %s)", uid, rows, columns, square.shape[0], voi)
    return RadiographImage(
        image=Image.fromarray(square),
        source_rows=rows,
        source_columns=columns,
        padding=padding,
        window=window,
        voi=voi,
        notes=tuple(notes),
    )


def pixel_padding_mask(raw: np.ndarray, ds: Dataset) -> np.ndarray | None:
    """Boolean mask of stored values that are Pixel Padding, or None if none declared.

    PixelPaddingValue (and PixelPaddingRangeLimit, which makes it a range) are
    defined on *stored* values, so this must run on the array before any LUT.
    """
    if "PixelPaddingValue" not in ds or ds.PixelPaddingValue is None:
        return None
    value = int(ds.PixelPaddingValue)
    limit = ds.get("PixelPaddingRangeLimit")
    if limit is None:
        mask = raw == value
    else:
        low, high = sorted((value, int(limit)))
        mask = (raw >= low) & (raw <= high)
    return mask if bool(mask.any()) else None


def _greyscale_to_8bit(
    raw: np.ndarray, ds: Dataset, uid: str, notes: list[str]
) -> tuple[np.ndarray, tuple[float, float] | None, str]:
    """Modality LUT → VOI (first window / VOI LUT / min–max) → MONOCHROME1 inverted →
    ``np.round`` → 8 bits, in the container's order.

    Returns the grey levels, the window applied (if one was) and which VOI was used.
    """
    padding = pixel_padding_mask(raw, ds)
    monochrome1 = str(ds.PhotometricInterpretation).strip().upper() == "MONOCHROME1"
    inverse_plut = str(ds.get("PresentationLUTShape", "")).strip().upper() == "INVERSE"
    # MONOCHROME1: the minimum value is white. The model was trained on "bone is bright"
    # images, so invert after the VOI, as a display would. MONOCHROME1 images carry
    # PresentationLUTShape INVERSE for that same inversion (PS3.3 C.8.11.6), so it is one
    # inversion, never two; on a MONOCHROME2 image INVERSE alone asks for it.
    invert = monochrome1 or inverse_plut
    if inverse_plut and not monochrome1:
        notes.append("MONOCHROME2 with PresentationLUTShape INVERSE: inverted")

    window: tuple[float, float] | None = None
    grey8: np.ndarray | None = None
    voi = "min_max"
    has_lut = "VOILUTSequence" in ds and len(ds.VOILUTSequence) > 0
    if "WindowCenter" in ds and "WindowWidth" in ds:
        try:
            grey8 = _windowed_8bit(raw, ds, invert)
            window = (_first(ds.WindowCenter), _first(ds.WindowWidth))
            voi = "window"
            if has_lut:
                notes.append("VOI LUT Sequence not used: the first window is (as the container)")
        except ValueError as exc:
            # A window pydicom refuses (width < 1, unknown function) is a header
            # fault; a VOI LUT or min–max still gives a usable image, and we say so.
            notes.append(f"window ignored ({exc})")
            logger.warning("radiograph %s: window ignored: %s", uid, exc)
    if grey8 is None and has_lut:
        grey8 = to_8bit(_apply_voi_lut_sequence(apply_modality_lut(raw, ds), ds), invert)
        voi = "voi_lut_sequence"
    if grey8 is None:
        grey8 = to_8bit(_min_max(apply_modality_lut(raw, ds), padding), invert)

    if padding is not None:
        # Padding is "no image here": black, whatever the polarity.
        grey8[padding] = 0
    return grey8, window, voi


def to_8bit(scaled: np.ndarray, invert: bool = False) -> np.ndarray:
    """[0, 1] → 0–255, inverted when asked, then np.round (half to even) before the cast,
    as the container does (the node's rendered images take the same step): inverting
    after the rounding would move a value exactly half way (127.5 → 128 → 127, where the
    container gives round(127.5) = 128)."""
    grey = np.clip(scaled, 0.0, 1.0) * 255.0
    if invert:
        grey = 255.0 - grey
    return np.asarray(np.round(grey).astype(np.uint8))


def _windowed_8bit(raw: np.ndarray, ds: Dataset, invert: bool) -> np.ndarray:
    """The Modality LUT, then the first window, in 8 bits. For integer pixels, through a
    table of the stored levels between the image's minimum and maximum: the LUT, window,
    rounding and cast are worked out once per level (4,096 for 12 bits) rather than per
    pixel (3.6 million for a chest CR: 7 ms against 45), and every step is per value, so
    each pixel comes out the same."""
    if raw.dtype.kind in "iu" and raw.size:
        low, high = int(raw.min()), int(raw.max())
        if high - low < raw.size:
            levels = np.arange(low, high + 1, dtype=raw.dtype)
            table = to_8bit(_apply_first_window(apply_modality_lut(levels, ds), ds), invert)
            if low == 0:
                return np.asarray(np.take(table, raw))
            wide = np.int64 if raw.itemsize >= 4 else np.int32  # no overflow in the offset
            return np.asarray(np.take(table, np.subtract(raw, low, dtype=wide)))
    return to_8bit(_apply_first_window(apply_modality_lut(raw, ds), ds), invert)


def _apply_first_window(values: np.ndarray, ds: Dataset) -> np.ndarray:
    """First WindowCenter/WindowWidth through pydicom, normalised to [0, 1].

    pydicom maps the window onto an output range [y_min, y_max] that depends on
    BitsStored, PixelRepresentation and the rescale; rather than re-derive that
    rule we push −∞ and +∞ through the same function to read the range off.
    """
    windowed = apply_windowing(values, ds, index=0)
    with np.errstate(over="ignore"):
        y_min, y_max = apply_windowing(np.array([-np.inf, np.inf]), ds, index=0)
    if not np.isfinite(y_min) or not np.isfinite(y_max) or y_max <= y_min:
        raise ValueError(f"window output range [{y_min}, {y_max}] is empty")
    return np.asarray((np.asarray(windowed, dtype=np.float64) - y_min) / (y_max - y_min))


def _apply_voi_lut_sequence(values: np.ndarray, ds: Dataset) -> np.ndarray:
    """First VOI LUT, normalised by the LUT's declared output depth."""
    out = np.asarray(apply_voi_lut(values, ds, index=0, prefer_lut=True), dtype=np.float64)
    item = ds.VOILUTSequence[0]
    descriptor = item.get("LUTDescriptor")
    bits = int(descriptor[2]) if descriptor is not None and len(descriptor) == 3 else 16
    top = float(2**bits - 1)
    # Some writers declare 16 bits and fill 12 (or the reverse); trust the data
    # when it exceeds the declared depth rather than clipping the highlights.
    top = max(top, float(out.max()))
    return out / top if top > 0 else out


def _min_max(values: np.ndarray, padding: np.ndarray | None) -> np.ndarray:
    """No window in the header: stretch the non-padding range to [0, 1]."""
    data = values if padding is None else values[~padding]
    if data.size == 0:
        return np.zeros(values.shape, dtype=np.float64)
    low, high = float(data.min()), float(data.max())
    if high <= low:
        return np.zeros(values.shape, dtype=np.float64)
    return (np.asarray(values, dtype=np.float64) - low) / (high - low)


def _colour_to_rgb8(raw: np.ndarray, ds: Dataset) -> np.ndarray:
    if raw.dtype == np.uint8:
        return raw
    # >8-bit colour is rare; scale by BitsStored instead of guessing a window.
    bits = int(ds.get("BitsStored", 16))
    return np.asarray(np.round(raw.astype(np.float64) / (2**bits - 1) * 255.0), dtype=np.uint8)


def _first(value: object) -> float:
    """WindowCenter/WindowWidth may be multi-valued; the first view is the default."""
    if isinstance(value, (list, tuple, pydicom.multival.MultiValue)):
        return float(value[0])
    return float(value)  # type: ignore[arg-type]
