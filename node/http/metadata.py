"""WADO-RS metadata: a stored instance as PS3.18 Annex F JSON, bulk data as URIs.

Fast because a viewer asks for a whole series at once (300 CT slices: well under a
second). The header is read with ``defer_size``, so large values stay on disk and only
their position is known: every binary value over :data:`BULK_THRESHOLD` bytes, and the
pixel data always, becomes a ``BulkDataURI`` without being read. The elements a header
is mostly made of (text, numbers, UIDs) are turned into JSON straight from their raw
bytes; pydicom's own element conversion (``DataElement.to_json_dict``) does the rest —
sequences, ambiguous VRs of implicit VR files, big endian files, ISO 2022 character
sets, and any value that doesn't parse — and costs ~30 µs an element, which is
what made a 300-slice series take seconds.
"""

from __future__ import annotations

import base64
import logging
import math
import struct
from typing import Any

from pydicom import Dataset
from pydicom.charset import python_encoding
from pydicom.datadict import dictionary_VR
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.tag import BaseTag, Tag
from pydicom.uid import UID

from node.http.wado import BULK_THRESHOLD, BULK_VRS, open_header
from node.store.catalog_records import InstanceRecord

log = logging.getLogger(__name__)

__all__ = ["instance_metadata"]

_PIXEL_DATA = Tag("PixelData")
_PIXEL_TAGS = frozenset({Tag("PixelData"), Tag("FloatPixelData"), Tag("DoubleFloatPixelData")})
_CHARSET = Tag("SpecificCharacterSet")
_AVAILABLE_TRANSFER_SYNTAX = f"{Tag('AvailableTransferSyntaxUID'):08X}"

# VRs whose values are plain ASCII text; those after them depend on the character set.
_ASCII_TEXT = frozenset({"AE", "AS", "CS", "DA", "DT", "TM", "UI"})
_CHARSET_TEXT = frozenset({"SH", "LO", "UC", "PN"})
# One value each, never split on backslashes; trailing spaces only are padding.
_SINGLE_TEXT = frozenset({"ST", "LT", "UT", "UR"})
_BINARY_NUMBERS = {
    "US": "H",
    "SS": "h",
    "UL": "I",
    "SL": "i",
    "FL": "f",
    "FD": "d",
    "UV": "Q",
    "SV": "q",
}
# Character sets whose bytes never hide a backslash inside a character: decoded here.
# ISO 2022 extensions (multi-valued SpecificCharacterSet), Shift-JIS and GB18030/GBK
# are left to pydicom.
_SIMPLE_CHARSETS = frozenset(
    {
        "",
        "ISO_IR 6",
        "ISO_IR 100",
        "ISO_IR 101",
        "ISO_IR 109",
        "ISO_IR 110",
        "ISO_IR 144",
        "ISO_IR 127",
        "ISO_IR 126",
        "ISO_IR 138",
        "ISO_IR 148",
        "ISO_IR 166",
        "ISO_IR 203",
        "ISO_IR 192",
    }
)


class _Fallback(Exception):
    """This element is pydicom's to convert."""


def instance_metadata(record: InstanceRecord, instance_url: str) -> dict[str, Any]:
    """The instance as DICOM JSON; bulk data at ``{instance_url}/bulkdata/...``.

    Raises StoredFileMissing or UnreadableInstance (from :mod:`node.http.wado`).
    """
    ds = open_header(record)
    converter = _Converter(
        f"{instance_url}/bulkdata",
        record,
        compressed=UID(record.transfer_syntax_uid).is_compressed,
        little_endian=bool(ds.original_encoding[1]),
    )
    answer = converter.dataset(ds, (), _encoding(ds, _DEFAULT_CHARSET))
    answer[_AVAILABLE_TRANSFER_SYNTAX] = {"vr": "UI", "Value": [record.transfer_syntax_uid]}
    return answer


_DEFAULT_CHARSET = python_encoding[""]


def _encoding(ds: Dataset, inherited: str | None) -> str | None:
    """The Python codec for this data set's text (an item inherits its parent's unless it
    names its own); None: pydicom decodes it."""
    raw = ds.get_item(_CHARSET, keep_deferred=True)
    if raw is None:
        return inherited
    value = raw.value if isinstance(raw, RawDataElement | DataElement) else None
    if isinstance(value, bytes):
        terms = value.decode("ascii", "replace").strip(" \0").split("\\")
    elif isinstance(value, str):
        terms = [value]
    else:
        terms = [str(v) for v in (value or [])]
    if len(terms) != 1 or terms[0].strip() not in _SIMPLE_CHARSETS:
        return None
    return python_encoding[terms[0].strip()]


class _Converter:
    def __init__(
        self, bulk_root: str, record: InstanceRecord, *, compressed: bool, little_endian: bool
    ) -> None:
        self.bulk_root = bulk_root
        self.record = record
        self.compressed = compressed
        self.little_endian = little_endian

    def dataset(
        self, ds: Dataset, location: tuple[str, ...], encoding: str | None
    ) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for tag in ds.keys():
            if tag.element == 0:  # group lengths: PS3.18 F.2 leaves them out
                continue
            key = f"{tag:08X}"
            here = (*location, key)
            raw = ds.get_item(tag, keep_deferred=True)
            if isinstance(raw, RawDataElement) and self.little_endian and encoding is not None:
                try:
                    out[key] = self._raw(raw, here, encoding)
                    continue
                except _Fallback:
                    pass
            out[key] = self._element(ds, tag, here, encoding)
        return out

    def _bulk(self, vr: str, here: tuple[str, ...]) -> dict[str, Any]:
        return {"vr": vr, "BulkDataURI": f"{self.bulk_root}/{'/'.join(here)}"}

    def _raw(self, raw: RawDataElement, here: tuple[str, ...], encoding: str) -> dict[str, Any]:
        vr = raw.VR or _implicit_vr(raw.tag)
        if raw.tag in _PIXEL_TAGS and len(here) == 1:
            return self._bulk("OB" if self.compressed else (raw.VR or "OW"), here)
        if vr in BULK_VRS:
            if raw.value is None or len(raw.value) > BULK_THRESHOLD:
                return self._bulk(vr, here)
            if not raw.value:
                return {"vr": vr}
            return {"vr": vr, "InlineBinary": base64.b64encode(raw.value).decode("ascii")}
        value = raw.value
        if value is None or vr == "SQ" or vr not in _PLAIN_VRS:
            raise _Fallback
        if not value:
            return {"vr": vr}
        return {"vr": vr, "Value": _values(vr, value, encoding)}

    def _element(
        self, ds: Dataset, tag: BaseTag, here: tuple[str, ...], encoding: str | None
    ) -> dict[str, Any]:
        element = ds[tag]
        if element.VR == "SQ":
            items = [
                self.dataset(item, (*here, str(i)), _encoding(item, encoding))
                for i, item in enumerate(element.value)
            ]
            return {"vr": "SQ", "Value": items} if items else {"vr": "SQ"}
        size = len(element.value) if isinstance(element.value, bytes | bytearray) else 0
        if element.VR in BULK_VRS and (
            (tag in _PIXEL_TAGS and len(here) == 1) or size > BULK_THRESHOLD
        ):
            pixels = tag == _PIXEL_DATA and self.compressed
            return self._bulk("OB" if pixels else element.VR, here)
        try:
            return element.to_json_dict(None, BULK_THRESHOLD)
        except Exception as e:  # a value pydicom can't put in JSON: say so, keep the rest
            log.warning(
                "instance %s: element %s left without a value in its metadata: %s",
                self.record.sop_uid,
                here[-1],
                e,
            )
            return {"vr": element.VR}


_PLAIN_VRS = _ASCII_TEXT | _CHARSET_TEXT | _SINGLE_TEXT | {"DS", "IS", "AT"} | set(_BINARY_NUMBERS)


def _implicit_vr(tag: BaseTag) -> str:
    try:
        vr = dictionary_VR(tag)
    except KeyError:
        return "UN"  # a private element of an implicit VR file
    if " or " in vr:
        raise _Fallback  # US or SS, OB or OW...: pydicom resolves them from the data set
    return vr


def _values(vr: str, value: bytes, encoding: str) -> list[Any]:
    if vr in _BINARY_NUMBERS:
        code = _BINARY_NUMBERS[vr]
        count, extra = divmod(len(value), struct.calcsize(code))
        if extra:
            raise _Fallback
        numbers = list(struct.unpack(f"<{count}{code}", value))
        if vr in ("FL", "FD") and not all(math.isfinite(n) for n in numbers):
            raise _Fallback  # NaN and infinities have no JSON form
        return numbers
    if vr == "AT":
        if len(value) % 4:
            raise _Fallback
        pairs = struct.unpack(f"<{len(value) // 2}H", value)
        return [f"{pairs[i]:04X}{pairs[i + 1]:04X}" for i in range(0, len(pairs), 2)]
    try:
        text = value.decode("ascii" if vr in _ASCII_TEXT else encoding)
    except UnicodeDecodeError:
        raise _Fallback from None
    if vr in _SINGLE_TEXT:
        return [text.rstrip(" \0")]
    parts = [part.strip(" \0") for part in text.split("\\")]
    if vr == "PN":
        return [_person_name(part) for part in parts]
    if vr == "IS":
        return [_number(part, int) for part in parts]
    if vr == "DS":
        return [_number(part, _decimal) for part in parts]
    return [part or None for part in parts]


def _decimal(text: str) -> float | int:
    number = float(text)
    if not math.isfinite(number):
        raise ValueError(text)
    return int(number) if text.lstrip("+-").isdigit() else number


def _number(text: str, convert: Any) -> Any:
    if not text:
        return None
    try:
        return convert(text)
    except ValueError:
        raise _Fallback from None


def _person_name(text: str) -> dict[str, str] | None:
    if not text:
        return None
    groups = zip(("Alphabetic", "Ideographic", "Phonetic"), text.split("="), strict=False)
    return {kind: part for kind, part in groups if part} or None
