"""DICOMweb messages: the Accept header, choosing what to send, multipart, Warning headers.

PS3.18 8.7 names what a client may ask for: a media type, for ``multipart/related`` its
``type`` parameter, and a ``transfer-syntax`` parameter (``*``: as stored). Each
``choose_*`` function walks the client's ranges in order of preference and returns the
first the node can produce, or raises :class:`NotAcceptable` (HTTP 406) naming what it
could have sent. A missing Accept header takes the node's natural answer.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from enum import StrEnum

from fastapi import Request
from pydicom.pixels.decoders.base import get_decoder
from pydicom.uid import (
    HTJ2K,
    JPEG2000,
    JPEG2000MC,
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    HTJ2KLossless,
    HTJ2KLosslessRPCL,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEG2000MCLossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)

__all__ = [
    "ANY_SYNTAX",
    "DICOM",
    "DICOM_JSON",
    "OCTET_STREAM",
    "FrameChoice",
    "FrameForm",
    "ImageType",
    "MediaRange",
    "Multipart",
    "NotAcceptable",
    "ROOT",
    "accepted",
    "can_decode",
    "can_transcode",
    "PartForm",
    "choose_dicom",
    "choose_frames",
    "choose_image",
    "choose_json",
    "choose_octets",
    "dicomweb_root",
    "frame_media_type",
    "parse_accept",
    "peer",
    "warning_header",
]

DICOM = "application/dicom"
DICOM_JSON = "application/dicom+json"
OCTET_STREAM = "application/octet-stream"
MULTIPART = "multipart/related"
ANY_SYNTAX = "*"
ROOT = "/dicom-web"
_AGENT = "medgemma-node"

# How a compressed frame travels on its own (PS3.18 table 8.7.4-2).
_FRAME_MEDIA: dict[str, str] = {
    JPEGBaseline8Bit: "image/jpeg",
    JPEGExtended12Bit: "image/jpeg",
    JPEGLossless: "image/jpeg",
    JPEGLosslessSV1: "image/jpeg",
    JPEGLSLossless: "image/jls",
    JPEGLSNearLossless: "image/jls",
    JPEG2000Lossless: "image/jp2",
    JPEG2000: "image/jp2",
    JPEG2000MCLossless: "image/jpx",
    JPEG2000MC: "image/jpx",
    HTJ2KLossless: "image/jphc",
    HTJ2KLosslessRPCL: "image/jphc",
    HTJ2K: "image/jphc",
    RLELossless: "image/dicom-rle",
}
# Syntaxes a stored instance can be rewritten into without losing anything: pydicom
# decodes the pixel data (when it is compressed) and writes the data set again.
TRANSCODE_TARGETS = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)
_NATIVE = frozenset(
    {ExplicitVRLittleEndian, ImplicitVRLittleEndian, DeflatedExplicitVRLittleEndian}
)

_RANGE = re.compile(r'(?:[^,"]|"[^"]*")+')
_PARAMETER = re.compile(r'\s*([^=\s;]+)\s*=\s*("[^"]*"|[^;]*)')


class NotAcceptable(ValueError):
    """Nothing the client accepts can be produced (HTTP 406); the message says what can."""


@dataclass(frozen=True)
class MediaRange:
    media_type: str  # lower case: "multipart/related", "application/dicom", "*/*"
    part_type: str | None  # multipart/related's type parameter
    transfer_syntax: str | None
    quality: float

    def matches(self, media_type: str) -> bool:
        """Whether this range (or, for multipart, its part type) covers ``media_type``."""
        wanted = self.part_type if self.media_type == MULTIPART else self.media_type
        if wanted is None or wanted == "*/*":
            return True
        major, _, minor = wanted.partition("/")
        return wanted == media_type or (minor == "*" and media_type.startswith(major + "/"))

    @property
    def multipart(self) -> bool:
        return self.media_type == MULTIPART or self.media_type == "*/*"


def parse_accept(header: str | None) -> list[MediaRange]:
    """The ranges of an Accept header, most preferred first (q=0 ones dropped).

    A missing or empty header is one ``*/*`` range.
    """
    if not header or not header.strip():
        return [MediaRange("*/*", None, None, 1.0)]
    ranges: list[MediaRange] = []
    for text in _RANGE.findall(header):
        media_type, _, rest = text.strip().partition(";")
        parameters = {
            name.lower(): value.strip().strip('"') for name, value in _PARAMETER.findall(rest)
        }
        try:
            quality = float(parameters.get("q", "1"))
        except ValueError:
            quality = 1.0
        if quality <= 0 or not media_type.strip():
            continue
        ranges.append(
            MediaRange(
                media_type=media_type.strip().lower(),
                part_type=parameters.get("type", "").lower() or None,
                transfer_syntax=parameters.get("transfer-syntax") or None,
                quality=quality,
            )
        )
    # sorted() is stable: equal preferences keep the client's order.
    return sorted(ranges, key=lambda r: -r.quality)


def frame_media_type(transfer_syntax: str) -> str | None:
    """The media type of a stored compressed frame; None for native pixel data."""
    return _FRAME_MEDIA.get(transfer_syntax)


def can_decode(transfer_syntax: str) -> bool:
    if transfer_syntax in _NATIVE:
        return True
    try:
        return bool(get_decoder(UID(transfer_syntax)).is_available)
    except (NotImplementedError, ValueError):
        return False


def can_transcode(stored: str, target: str) -> bool:
    """Whether an instance stored in ``stored`` can be sent in ``target`` losslessly."""
    if target == stored:
        return True
    # pydicom can't write big endian data as little endian (nor the reverse).
    return target in TRANSCODE_TARGETS and stored != ExplicitVRBigEndian and can_decode(stored)


@dataclass(frozen=True)
class PartForm:
    """Whole instances: multipart or one bare part; transfer syntax None: as stored."""

    multipart: bool
    transfer_syntax: str | None


def _dicom_syntax(wanted: str | None, stored: Sequence[str]) -> tuple[bool, str | None]:
    """(possible, syntax to send: None as stored) for a range's transfer-syntax parameter."""
    if wanted is None or wanted == ANY_SYNTAX or all(s == wanted for s in stored):
        return True, None
    return all(can_transcode(s, wanted) for s in stored), wanted


def choose_dicom(ranges: Iterable[MediaRange], stored: Sequence[str]) -> PartForm:
    """How to send whole instances stored in ``stored`` syntaxes (PS3.18 8.7.3.5)."""
    for accept in ranges:
        single = accept.media_type == DICOM and len(stored) == 1
        if not (accept.multipart or single) or not accept.matches(DICOM):
            continue
        possible, syntax = _dicom_syntax(accept.transfer_syntax, stored)
        if possible:
            return PartForm(multipart=not single, transfer_syntax=syntax)
    held = ", ".join(sorted(set(stored)))
    targets = [t for t in TRANSCODE_TARGETS if all(can_transcode(s, t) for s in stored)]
    raise NotAcceptable(
        f'instances are sent as multipart/related; type="{DICOM}" with transfer-syntax=* '
        f"(as stored: {held})" + (f" or transfer-syntax={' or '.join(targets)}" if targets else "")
    )


def choose_json(ranges: Iterable[MediaRange]) -> str:
    """The JSON media type to answer a search or metadata request with."""
    for accept in ranges:
        if accept.media_type in (DICOM_JSON, "application/json", "application/*", "*/*"):
            return DICOM_JSON
    raise NotAcceptable(f"the answer is {DICOM_JSON} (or application/json)")


class FrameForm(StrEnum):
    STORED = "stored"  # the stored bytes: native, or the compressed frame as it is
    NATIVE = "native"  # uncompressed little endian (compressed frames decoded)


@dataclass(frozen=True)
class FrameChoice:
    form: FrameForm
    multipart: bool


def choose_frames(ranges: Iterable[MediaRange], stored: str, *, count: int) -> FrameChoice:
    """How to send ``count`` frames (or pixel data as bulk data) stored in ``stored``."""
    compressed = frame_media_type(stored)
    decodable = can_decode(stored)
    for accept in ranges:
        single = not accept.multipart and count == 1
        if not (accept.multipart or single):
            continue
        syntax = accept.transfer_syntax
        if accept.matches(OCTET_STREAM) and (
            accept.part_type in (None, "*/*", OCTET_STREAM) or accept.media_type == OCTET_STREAM
        ):
            if syntax == ANY_SYNTAX or (compressed is None and syntax in (None, stored)):
                return FrameChoice(FrameForm.STORED, not single)
            if syntax in (None, ExplicitVRLittleEndian) and decodable:
                return FrameChoice(FrameForm.NATIVE, not single)
        if compressed is not None and accept.matches(compressed):
            if syntax in (None, ANY_SYNTAX, stored):
                return FrameChoice(FrameForm.STORED, not single)
    offered = [f"{OCTET_STREAM} (transfer-syntax={ExplicitVRLittleEndian})"] if decodable else []
    if compressed is not None:
        offered.insert(0, f"{compressed} (transfer-syntax={stored})")
    raise NotAcceptable(
        f"pixel data is stored in transfer syntax {stored}; it can be sent as "
        + (" or ".join(offered) or "nothing: the node can't decode it")
        + (", multipart/related, or as one bare part for one frame")
    )


def choose_octets(ranges: Iterable[MediaRange]) -> bool:
    """Bulk data other than pixel data: True for multipart, False for one bare part."""
    for accept in ranges:
        if accept.matches(OCTET_STREAM):
            return accept.multipart
    raise NotAcceptable(f"bulk data is sent as {OCTET_STREAM}, multipart/related or bare")


class ImageType(StrEnum):
    JPEG = "image/jpeg"
    PNG = "image/png"


def choose_image(ranges: Iterable[MediaRange]) -> ImageType:
    """The rendered picture's type: JPEG unless the client prefers PNG (PS3.18 8.7.4)."""
    for accept in ranges:
        if accept.media_type in (ImageType.JPEG, ImageType.PNG):
            return ImageType(accept.media_type)
        if accept.media_type in ("image/*", "*/*"):
            return ImageType.JPEG
    raise NotAcceptable("rendered images are sent as image/jpeg or image/png")


class Multipart:
    """A ``multipart/related`` body written part by part, so it can be streamed."""

    def __init__(self, part_type: str) -> None:
        self.boundary = secrets.token_hex(16)
        self.part_type = part_type

    @property
    def content_type(self) -> str:
        return f'{MULTIPART}; type="{self.part_type}"; boundary={self.boundary}'

    def part(self, content_type: str, chunks: Iterable[bytes]) -> Iterator[bytes]:
        yield f"--{self.boundary}\r\nContent-Type: {content_type}\r\n\r\n".encode("ascii")
        yield from chunks
        yield b"\r\n"

    def end(self) -> bytes:
        return f"--{self.boundary}--\r\n".encode("ascii")


# -- what a request says, what an answer says ---------------------------------------


def peer(request: Request) -> str:
    return request.client.host if request.client else "unknown"


def dicomweb_root(request: Request) -> str:
    """The DICOMweb base URL as the client reached it (for RetrieveURL and BulkDataURI).

    A reverse proxy's X-Forwarded-Host wins. Otherwise the Host header, with the port
    the connection came in on when the header has none and that port isn't the scheme's
    default: dicomweb-client (0.61) sends ``Host: 127.0.0.1`` to port 8042, and the URLs
    it is handed back must still reach the node.
    """
    base = request.base_url
    forwarded = request.headers.get("x-forwarded-host", "").split(",")[0].strip()
    if forwarded:
        base = base.replace(netloc=forwarded)
    elif request.url.port is None and request.scope.get("server"):
        _host, port = request.scope["server"]
        if port not in (None, {"http": 80, "https": 443}.get(base.scheme)):
            base = base.replace(port=port)
    return str(base).rstrip("/") + ROOT


def warning_header(warnings: Sequence[str]) -> dict[str, str]:
    """A Warning header (RFC 9111 5.5, code 299 as PS3.18 uses it); none when empty."""
    if not warnings:
        return {}
    texts = (w.replace('"', "'") for w in warnings)
    return {"Warning": ", ".join(f'299 {_AGENT} "{text}"' for text in texts)}


def accepted(request: Request) -> list[MediaRange]:
    """The request's Accept header, most preferred first."""
    return parse_accept(request.headers.get("accept"))
