"""WADO-RS from the stored files: whole instances, metadata, frames and other bulk data.

Stored files are Part 10 files exactly as received. Whole instances go out as they are,
read in chunks, or rewritten by pydicom in a native syntax when the client asks for one
(compressed pixel data decoded by the installed pylibjpeg plugins; big endian never:
pydicom can't swap a whole data set). Headers are read with ``defer_size``: elements
larger than :data:`BULK_THRESHOLD` stay on disk, only their position read, so
metadata for a 300-slice series doesn't read 300 images and a frame of a multi-frame
object is one ``seek`` and ``read`` (native) or one fragment walk (encapsulated, through
``pydicom.encaps.get_frame``).
"""

from __future__ import annotations

import io
import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
from pydicom import Dataset, dcmread
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.encaps import get_frame
from pydicom.errors import InvalidDicomError
from pydicom.pixels.utils import pixel_array
from pydicom.tag import Tag
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)

from node.http.media import OCTET_STREAM, FrameForm, frame_media_type
from node.store.catalog_records import InstanceRecord

log = logging.getLogger(__name__)

__all__ = [
    "BULK_THRESHOLD",
    "NoSuchData",
    "StoredFileMissing",
    "UnreadableInstance",
    "BULK_VRS",
    "bulk_value",
    "file_chunks",
    "frame_count",
    "open_header",
    "parse_bulk_location",
    "parse_frame_list",
    "read_frames",
    "transcoded",
]

# Binary values longer than this (bytes) are served at a BulkDataURI, never inline.
BULK_THRESHOLD = 1024
_CHUNK = 1 << 20
# Binary VRs: served at a BulkDataURI when long, else inline (base64).
BULK_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "UN"})
_PIXEL_DATA = Tag("PixelData")
_FRAME_LIST = re.compile(r"^[0-9]+(,[0-9]+)*$")
_TAG_TEXT = re.compile(r"^[0-9A-Fa-f]{8}$")


class StoredFileMissing(LookupError):
    """The index names a file that is no longer on disk; the message names the instance."""


class UnreadableInstance(ValueError):
    """A stored file that doesn't read or decode as needed; the message names the instance."""


class NoSuchData(LookupError):
    """A frame or bulk data item the instance doesn't have (HTTP 404)."""


def _open(record: InstanceRecord) -> BinaryIO:
    try:
        return Path(record.path).open("rb")
    except FileNotFoundError:
        raise StoredFileMissing(
            f"instance {record.sop_uid} is in the index but its file is missing from storage"
        ) from None


def file_chunks(record: InstanceRecord) -> Iterator[bytes]:
    """The stored file as it is, a chunk at a time (opened before the first chunk)."""
    handle = _open(record)

    def chunks() -> Iterator[bytes]:
        with handle:
            while chunk := handle.read(_CHUNK):
                yield chunk

    return chunks()


def open_header(record: InstanceRecord) -> Dataset:
    """The stored data set, values over BULK_THRESHOLD left on disk until asked for."""
    try:
        return dcmread(record.path, defer_size=BULK_THRESHOLD)
    except FileNotFoundError:
        raise StoredFileMissing(
            f"instance {record.sop_uid} is in the index but its file is missing from storage"
        ) from None
    except (InvalidDicomError, OSError, ValueError, EOFError) as e:
        raise UnreadableInstance(f"instance {record.sop_uid}: stored file unreadable: {e}") from e


def _header(record: InstanceRecord, handle: BinaryIO, *, deferred: bool = True) -> Dataset:
    try:
        return dcmread(handle, defer_size=BULK_THRESHOLD if deferred else None)
    except (InvalidDicomError, OSError, ValueError, EOFError) as e:
        raise UnreadableInstance(f"instance {record.sop_uid}: stored file unreadable: {e}") from e


def transcoded(record: InstanceRecord, target: str) -> bytes:
    """The instance rewritten in native syntax ``target``, its UIDs unchanged."""
    with _open(record) as handle:
        ds = _header(record, handle, deferred=False)
    try:
        if UID(record.transfer_syntax_uid).is_compressed:
            ds.decompress(generate_instance_uid=False)
        ds.file_meta.TransferSyntaxUID = UID(target)
        out = io.BytesIO()
        ds.save_as(
            out,
            implicit_vr=target == ImplicitVRLittleEndian,
            little_endian=True,
            enforce_file_format=True,
        )
    except Exception as e:  # decoders and writers raise many types; all mean "can't"
        raise UnreadableInstance(
            f"instance {record.sop_uid}: can't be rewritten from {record.transfer_syntax_uid} "
            f"to {target}: {e}"
        ) from e
    return out.getvalue()


# -- frames ----------------------------------------------------------------------------


def parse_frame_list(text: str) -> list[int]:
    """``1,3,5`` → 0-based indices; ValueError naming the list when malformed."""
    if not _FRAME_LIST.match(text) or any(int(n) < 1 for n in text.split(",")):
        raise ValueError(f"frame list {text!r} is not comma-separated frame numbers from 1")
    return [int(n) - 1 for n in text.split(",")]


@dataclass(frozen=True)
class _Pixels:
    """Where an instance's pixel data is and how it is laid out."""

    frames: int
    rows: int
    columns: int
    samples: int
    bits_allocated: int
    value_tell: int | None  # file offset of the value; None when it is in memory
    in_memory: bytes | None  # the value, when it was read (deflated files, small values)
    extended_offsets: tuple[bytes, bytes] | None
    big_endian: bool

    @property
    def frame_bits(self) -> int:
        return self.rows * self.columns * self.samples * self.bits_allocated


def frame_count(record: InstanceRecord) -> int:
    """Number of frames of the instance's pixel data (NoSuchData without pixel data)."""
    with _open(record) as handle:
        return _pixels(record, handle).frames


def _pixels(record: InstanceRecord, handle: BinaryIO) -> _Pixels:
    deflated = record.transfer_syntax_uid == DeflatedExplicitVRLittleEndian
    ds = _header(record, handle, deferred=not deflated)
    raw = ds.get_item(_PIXEL_DATA, keep_deferred=True)
    if raw is None:
        raise NoSuchData(f"instance {record.sop_uid} has no pixel data")
    # Deferred (left on disk) unless the file was inflated or the value is small.
    value_tell = raw.value_tell if isinstance(raw, RawDataElement) and raw.value is None else None
    on_disk = value_tell is not None
    try:
        extended = (
            (bytes(ds.ExtendedOffsetTable), bytes(ds.ExtendedOffsetTableLengths))
            if "ExtendedOffsetTable" in ds
            else None
        )
        return _Pixels(
            frames=int(ds.get("NumberOfFrames") or 1),
            rows=int(ds.Rows),
            columns=int(ds.Columns),
            samples=int(ds.get("SamplesPerPixel") or 1),
            bits_allocated=int(ds.BitsAllocated),
            value_tell=value_tell,
            in_memory=None if on_disk else bytes(ds.PixelData),
            extended_offsets=extended,
            big_endian=record.transfer_syntax_uid == ExplicitVRBigEndian,
        )
    except (AttributeError, TypeError, ValueError) as e:
        raise UnreadableInstance(
            f"instance {record.sop_uid}: image pixel attributes unusable: {e}"
        ) from e


def read_frames(
    record: InstanceRecord, indices: list[int], form: FrameForm
) -> tuple[str, Iterator[tuple[str, bytes]]]:
    """(part media type, the frames as (content type, bytes)) for 0-based ``indices``.

    Checks the frame numbers before returning, so a bad one is an error, not a cut stream.
    """
    handle = _open(record)
    try:
        pixels = _pixels(record, handle)
    except Exception:
        handle.close()
        raise
    for index in indices:
        if index >= pixels.frames:
            handle.close()
            raise NoSuchData(
                f"instance {record.sop_uid} has {pixels.frames} frame(s); "
                f"frame {index + 1} was asked for"
            )
    stored = record.transfer_syntax_uid
    compressed = frame_media_type(stored) if UID(stored).is_compressed else None
    if compressed is not None and form is FrameForm.STORED:
        content = f"{compressed}; transfer-syntax={stored}"
        return compressed, _frames(handle, record, pixels, indices, content, _encapsulated)
    native = f"{OCTET_STREAM}; transfer-syntax={ExplicitVRLittleEndian}"
    reader = _decoded if UID(stored).is_compressed else _native
    return OCTET_STREAM, _frames(handle, record, pixels, indices, native, reader)


def _frames(
    handle: BinaryIO,
    record: InstanceRecord,
    pixels: _Pixels,
    indices: list[int],
    content_type: str,
    reader: Any,
) -> Iterator[tuple[str, bytes]]:
    with handle:
        for index in indices:
            try:
                data = reader(handle, record, pixels, index)
            except (OSError, ValueError, KeyError, IndexError, RuntimeError) as e:
                raise UnreadableInstance(
                    f"instance {record.sop_uid}: frame {index + 1} unreadable: {e}"
                ) from e
            yield content_type, data


def _encapsulated(handle: BinaryIO, _record: InstanceRecord, pixels: _Pixels, index: int) -> bytes:
    buffer: bytes | BinaryIO = handle
    if pixels.in_memory is not None:
        buffer = pixels.in_memory
    else:
        assert pixels.value_tell is not None
        handle.seek(pixels.value_tell)
    return get_frame(
        buffer,
        index,
        number_of_frames=pixels.frames,
        extended_offsets=pixels.extended_offsets,
    )


def _native(handle: BinaryIO, _record: InstanceRecord, pixels: _Pixels, index: int) -> bytes:
    bits = pixels.frame_bits
    if bits % 8:
        # 1-bit frames needn't start on a byte: cut them out of the unpacked bits.
        whole = _native_value(handle, pixels, 0, (bits * pixels.frames + 7) // 8)
        unpacked = np.unpackbits(np.frombuffer(whole, np.uint8), bitorder="little")
        return np.packbits(unpacked[index * bits : (index + 1) * bits], bitorder="little").tobytes()
    size = bits // 8
    data = _native_value(handle, pixels, index * size, size)
    if len(data) != size:
        raise ValueError(f"pixel data ends {size - len(data)} bytes short of the frame")
    if pixels.big_endian and pixels.bits_allocated > 8:
        # Frames go out little endian (PS3.18 8.7.3.3.2), whatever the file's order.
        width = f">u{pixels.bits_allocated // 8}"
        data = np.frombuffer(data, width).astype(width.replace(">", "<")).tobytes()
    return data


def _native_value(handle: BinaryIO, pixels: _Pixels, offset: int, size: int) -> bytes:
    if pixels.in_memory is not None:
        return pixels.in_memory[offset : offset + size]
    assert pixels.value_tell is not None
    handle.seek(pixels.value_tell + offset)
    return handle.read(size)


def _decoded(handle: BinaryIO, record: InstanceRecord, _pixels: _Pixels, index: int) -> bytes:
    handle.seek(0)
    try:
        array = pixel_array(handle, index=index)
    except (ValueError, RuntimeError, NotImplementedError) as e:
        raise ValueError(f"can't decode {record.transfer_syntax_uid}: {e}") from e
    return np.ascontiguousarray(array).astype(array.dtype.newbyteorder("<")).tobytes()


# -- bulk data -------------------------------------------------------------------------


def parse_bulk_location(text: str) -> tuple[int | str, ...]:
    """``00880200/0/7FE00010`` → (tag, "0", tag); ValueError when malformed."""
    parts = text.strip("/").split("/")
    if len(parts) % 2 != 1:
        raise ValueError(f"bulk data location {text!r} must end with a tag")
    location: list[int | str] = []
    for i, part in enumerate(parts):
        if i % 2 == 0:
            if not _TAG_TEXT.match(part):
                raise ValueError(f"bulk data location {text!r}: {part!r} is not a tag")
            location.append(int(part, 16))
        else:
            if not part.isdigit():
                raise ValueError(f"bulk data location {text!r}: {part!r} is not an item number")
            location.append(part)
    return tuple(location)


def is_pixel_data(location: tuple[int | str, ...]) -> bool:
    return location == (int(_PIXEL_DATA),)


def bulk_value(record: InstanceRecord, location: tuple[int | str, ...]) -> bytes:
    """The value of a binary element other than the pixel data (NoSuchData if absent)."""
    ds = open_header(record)
    element: Any = ds
    for step in location:
        try:
            if isinstance(step, str):
                element = element[int(step)]
            else:
                element = element[step] if isinstance(element, Dataset) else None
                if element is not None and element.VR == "SQ":
                    element = element.value
        except (KeyError, IndexError, TypeError):
            element = None
        if element is None:
            break
    if not isinstance(element, DataElement) or element.VR not in BULK_VRS:
        raise NoSuchData(f"instance {record.sop_uid} has no bulk data at that location")
    value = element.value
    return bytes(value) if isinstance(value, bytes | bytearray) else b""
