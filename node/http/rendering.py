"""Rendered and thumbnail pictures (PS3.18 8.3.5): one frame as JPEG or PNG for a screen.

Grey-scale frames go through the Modality LUT (the frame's Pixel Value Transformation in
an enhanced object), then a VOI: the ``window`` parameter when given, else the first
WindowCenter/WindowWidth of the header (or of the frame's Frame VOI LUT), else a VOI LUT
Sequence, else the frame's own min–max; MONOCHROME1 is inverted after it, as a display
does. Colour frames are shown as decoded (YBR converted to RGB, palettes applied).
``viewport=vw,vh`` scales the picture to fit inside vw × vh, keeping its aspect ratio;
``viewport=vw,vh,sx,sy,sw,sh`` first cuts out that region of the frame.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

import numpy as np
from PIL import Image
from pydicom import Dataset, dcmread
from pydicom.pixels.processing import apply_color_lut, apply_modality_lut, apply_voi_lut
from pydicom.pixels.utils import pixel_array
from pydicom.uid import DeflatedExplicitVRLittleEndian

from node.http.media import ImageType
from node.http.wado import NoSuchData, StoredFileMissing
from node.imaging.multiframe import frame_attributes, is_multiframe
from node.imaging.radiograph import pixel_padding_mask, to_8bit
from node.store.catalog_records import InstanceRecord

__all__ = [
    "THUMBNAIL_SIDE",
    "BadRendering",
    "Rendering",
    "Viewport",
    "Window",
    "WindowFunction",
    "parse_rendering",
    "render_frame",
]

# A thumbnail fits in this square unless the client gives a viewport.
THUMBNAIL_SIDE = 256
DEFAULT_QUALITY = 90
# Parameters of PS3.18 8.3.5 the node takes without acting on them (a Warning says so).
IGNORED_PARAMETERS = frozenset({"annotation", "charset", "iccprofile"})
_GREYSCALE = frozenset({"MONOCHROME1", "MONOCHROME2"})


class BadRendering(ValueError):
    """A rendering parameter the node can't use (HTTP 400); the message names it."""


class WindowFunction(StrEnum):
    LINEAR = "LINEAR"
    LINEAR_EXACT = "LINEAR_EXACT"
    SIGMOID = "SIGMOID"


@dataclass(frozen=True)
class Window:
    center: float
    width: float
    function: WindowFunction = WindowFunction.LINEAR

    def check(self) -> None:
        if self.function is WindowFunction.LINEAR and self.width < 1:
            raise ValueError(f"width {self.width:g} is below 1, the least LINEAR takes")
        if self.width <= 0:
            raise ValueError(f"width {self.width:g} is not above 0")

    def apply(self, values: np.ndarray) -> np.ndarray:
        """PS3.3 C.11.2.1.2-3, onto [0, 1]."""
        x = values.astype(np.float64)
        c, w = self.center, self.width
        if self.function is WindowFunction.SIGMOID:
            out = 1.0 / (1.0 + np.exp(np.clip(-4.0 * (x - c) / w, -700, 700)))
        elif self.function is WindowFunction.LINEAR_EXACT:
            out = (x - c) / w + 0.5
        elif w <= 1:
            out = (x > c - 0.5).astype(np.float64)
        else:
            out = (x - (c - 0.5)) / (w - 1) + 0.5
        return np.asarray(np.clip(out, 0.0, 1.0))


@dataclass(frozen=True)
class Viewport:
    width: int
    height: int
    region: tuple[int, int, int, int] | None = None  # sx, sy, sw, sh in frame pixels


@dataclass(frozen=True)
class Rendering:
    window: Window | None = None
    viewport: Viewport | None = None
    quality: int = DEFAULT_QUALITY


def _numbers(name: str, text: str, count: Sequence[int]) -> list[float]:
    parts = text.split(",")
    try:
        numbers = [float(p) for p in parts]
    except ValueError:
        numbers = []
    if (
        len(parts) not in count
        or len(numbers) != len(parts)
        or not all(map(math.isfinite, numbers))
    ):
        raise BadRendering(f"{name}={text!r} is not {' or '.join(map(str, count))} numbers")
    return numbers


def _window(text: str) -> Window:
    parts = [p.strip() for p in text.split(",")]
    if len(parts) not in (2, 3):
        raise BadRendering(f"window={text!r} is not center,width[,function]")
    center, width = _numbers("window", ",".join(parts[:2]), (2,))
    function_text = parts[2] if len(parts) == 3 else "linear"
    try:
        function = WindowFunction(function_text.upper().replace("-", "_"))
    except ValueError:
        raise BadRendering(
            f"window={text!r}: function {function_text!r} is none of linear, linear-exact, sigmoid"
        ) from None
    window = Window(center, width, function)
    try:
        window.check()
    except ValueError as e:
        raise BadRendering(f"window={text!r}: {e}") from None
    return window


def _viewport(text: str) -> Viewport:
    numbers = _numbers("viewport", text, (2, 6))
    if not all(n.is_integer() for n in numbers) or numbers[0] < 1 or numbers[1] < 1:
        raise BadRendering(f"viewport={text!r}: sizes are whole numbers of pixels, at least 1")
    width, height = int(numbers[0]), int(numbers[1])
    if len(numbers) == 2:
        return Viewport(width, height)
    sx, sy, sw, sh = (int(n) for n in numbers[2:])
    if sx < 0 or sy < 0 or sw < 1 or sh < 1:
        raise BadRendering(
            f"viewport={text!r}: the region must start inside the frame and have a size "
            "(flipping by a negative size is not supported)"
        )
    return Viewport(width, height, (sx, sy, sw, sh))


def parse_rendering(parameters: Sequence[tuple[str, str]]) -> tuple[Rendering, list[str]]:
    """The rendering asked for, and warnings for parameters taken but not acted on."""
    window: Window | None = None
    viewport: Viewport | None = None
    quality = DEFAULT_QUALITY
    warnings: list[str] = []
    for name, value in parameters:
        key = name.lower()
        if key == "window":
            window = _window(value)
        elif key == "viewport":
            viewport = _viewport(value)
        elif key == "quality":
            if not value.isdigit() or not 1 <= int(value) <= 100:
                raise BadRendering(f"quality={value!r} is not a whole number from 1 to 100")
            quality = int(value)
        elif key in IGNORED_PARAMETERS:
            warnings.append(f"{key} is not supported; the picture is rendered without it")
        else:
            raise BadRendering(f"{name!r} is not a rendering parameter (window, viewport, quality)")
    return Rendering(window, viewport, quality), warnings


# -- pixels to picture -----------------------------------------------------------------


def render_frame(
    record: InstanceRecord,
    frame_index: int,
    image_type: ImageType,
    rendering: Rendering,
    *,
    max_side: int | None = None,
) -> bytes:
    """One frame (0-based) as a JPEG or PNG; ``max_side``: fit a square of that size.

    Raises NoSuchData (no such frame), StoredFileMissing, ValueError naming the instance
    when the frame can't be decoded or shown, and OSError when the file can't be read.
    """
    try:
        header = dcmread(record.path, stop_before_pixels=True)
    except FileNotFoundError:
        raise StoredFileMissing(
            f"instance {record.sop_uid} is in the index but its file is missing from storage"
        ) from None
    frames = int(header.get("NumberOfFrames") or 1)
    if frame_index >= frames:
        raise NoSuchData(
            f"instance {record.sop_uid} has {frames} frame(s); "
            f"frame {frame_index + 1} was asked for"
        )
    try:
        source: Dataset | str = record.path
        if record.transfer_syntax_uid == DeflatedExplicitVRLittleEndian:
            source = dcmread(record.path)  # pixel_array can't inflate from a path
        raw = pixel_array(source, index=frame_index if frames > 1 else None)
    except Exception as e:  # decoders raise many types; all mean "can't decode"
        raise ValueError(
            f"instance {record.sop_uid}: frame {frame_index + 1} can't be decoded: {e}"
        ) from e
    photometric = str(header.get("PhotometricInterpretation", "")).strip().upper()
    if photometric in _GREYSCALE:
        picture = Image.fromarray(_grey8(raw, header, frame_index, rendering.window))
    elif photometric == "PALETTE COLOR":
        rgb = apply_color_lut(raw, header)  # 8 or 16 bits, as the palette's LUTs are
        picture = Image.fromarray(_colour8(rgb, 8 * rgb.dtype.itemsize))
    elif raw.ndim == 3 and raw.shape[-1] == 3:
        picture = Image.fromarray(_colour8(raw, int(header.get("BitsStored") or 8)), "RGB")
    else:
        raise ValueError(
            f"instance {record.sop_uid}: PhotometricInterpretation {photometric!r} is not rendered"
        )
    picture = _fit(picture, rendering.viewport, max_side, record.sop_uid)
    out = io.BytesIO()
    if image_type is ImageType.PNG:
        picture.save(out, format="PNG")
    else:
        picture.save(out, format="JPEG", quality=rendering.quality)
    return out.getvalue()


def _fit(
    picture: Image.Image, viewport: Viewport | None, max_side: int | None, uid: str
) -> Image.Image:
    if viewport is not None and viewport.region is not None:
        sx, sy, sw, sh = viewport.region
        if sx >= picture.width or sy >= picture.height:
            raise BadRendering(
                f"viewport region starts at ({sx}, {sy}), outside instance {uid}'s "
                f"{picture.width}×{picture.height} frame"
            )
        picture = picture.crop((sx, sy, min(sx + sw, picture.width), min(sy + sh, picture.height)))
    if viewport is not None:
        box = (viewport.width, viewport.height)
    elif max_side is not None:
        box = (max_side, max_side)
    else:
        return picture
    scale = min(box[0] / picture.width, box[1] / picture.height)
    size = (max(1, round(picture.width * scale)), max(1, round(picture.height * scale)))
    return picture.resize(size, Image.Resampling.LANCZOS) if size != picture.size else picture


def _grey8(raw: np.ndarray, header: Dataset, index: int, asked: Window | None) -> np.ndarray:
    padding = pixel_padding_mask(raw, header)
    values = _modality(raw, header, index)
    window = asked or _header_window(header, index)
    if window is not None:
        scaled = window.apply(values)
    elif "VOILUTSequence" in header and len(header.VOILUTSequence) > 0:
        scaled = _voi_lut(values, header)
    else:
        data = values if padding is None else values[~padding]
        low, high = (float(data.min()), float(data.max())) if data.size else (0.0, 0.0)
        span = high - low
        scaled = (values.astype(np.float64) - low) / span if span > 0 else np.zeros(values.shape)
    inverse = str(header.get("PresentationLUTShape", "")).strip().upper() == "INVERSE"
    monochrome1 = str(header.PhotometricInterpretation).strip().upper() == "MONOCHROME1"
    # The minimum is white: one inversion, whichever says so.
    grey = to_8bit(scaled, invert=monochrome1 or inverse)
    if padding is not None:
        grey[padding] = 0
    return np.asarray(grey)


def _modality(raw: np.ndarray, header: Dataset, index: int) -> np.ndarray:
    if is_multiframe(header) and "RescaleSlope" not in header:
        # Enhanced objects keep the rescale in each frame's functional groups.
        frame = frame_attributes(header)[index]
        if frame.rescale_slope is not None:
            return raw * frame.rescale_slope + (frame.rescale_intercept or 0.0)
    return np.asarray(apply_modality_lut(raw, header))


def _header_window(header: Dataset, index: int) -> Window | None:
    """The first window of the header, or of the frame's (then the shared) Frame VOI LUT."""
    sources = [header]
    for sequence, item in (
        ("PerFrameFunctionalGroupsSequence", index),
        ("SharedFunctionalGroupsSequence", 0),
    ):
        groups = header.get(sequence) or []
        if item < len(groups):
            sources.extend(groups[item].get("FrameVOILUTSequence") or [])
    for source in sources:
        if "WindowCenter" in source and "WindowWidth" in source:
            try:
                function = WindowFunction(str(source.get("VOILUTFunction") or "LINEAR").upper())
                window = Window(_first(source.WindowCenter), _first(source.WindowWidth), function)
                window.check()
            except (TypeError, ValueError):
                continue  # a window the header gets wrong: the next VOI is used
            return window
    return None


def _first(value: object) -> float:
    if isinstance(value, str | bytes) or not hasattr(value, "__getitem__"):
        return float(value)  # type: ignore[arg-type]
    return float(value[0])  # type: ignore[index]


def _voi_lut(values: np.ndarray, header: Dataset) -> np.ndarray:
    out = np.asarray(apply_voi_lut(values, header, index=0, prefer_lut=True), dtype=np.float64)
    descriptor = header.VOILUTSequence[0].get("LUTDescriptor")
    bits = int(descriptor[2]) if descriptor is not None and len(descriptor) == 3 else 16
    top = max(float(2**bits - 1), float(out.max()))
    return out / top if top > 0 else out


def _colour8(rgb: np.ndarray, bits: int) -> np.ndarray:
    if rgb.dtype == np.uint8:
        return rgb
    scaled = np.round(rgb.astype(np.float64) / (2**bits - 1) * 255.0)
    return np.asarray(scaled.clip(0, 255), dtype=np.uint8)
