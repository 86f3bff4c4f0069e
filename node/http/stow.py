"""STOW-RS input (PS3.18 10.5): DICOMweb senders store instances through the C-STORE ingest path.

Each ``application/dicom`` part of the ``multipart/related`` body is a Part 10 file and
goes through :meth:`node.store.ingest.Ingest.accept`: fsynced into the spool, indexed,
completeness rules unchanged. The body is parsed as it streams in (python-multipart's
boundary parser), so only one part is held in memory at a time. This module only puts
each part's outcome (``node/store/outcome.py``) into the response: a refusal's C-STORE
status goes into the Failed SOP Sequence; the HTTP status is 200 (all stored), 202 (some
stored), 409 (none stored), 503 (none stored, all for the node's own trouble: retry
later), 400 (not a multipart body), 415 (not ``application/dicom`` parts).

There is no calling AE: the sender recorded with the series is the client's address
(when it fits an AE title's 16 characters), and ``node.allowed_peers`` doesn't apply.
As for C-STORE, refusals are logged and counted by reason, and each study a request
delivered is one ``study-received`` audit event (``via: stow-rs``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pydicom import Dataset
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response

from node.audit import AuditLog
from node.store.ingest import Ingest
from node.store.outcome import IngestOutcome, ReceivedStudies, Refusal, Refused

if TYPE_CHECKING:
    from python_multipart.multipart import MultipartCallbacks

log = logging.getLogger(__name__)

__all__ = ["DICOM_JSON", "StowResult", "receive_stow"]

DICOM_MEDIA_TYPE = "application/dicom"
DICOM_JSON = "application/dicom+json"
_AE_TITLE_LENGTH = 16


@dataclass(frozen=True)
class _Part:
    number: int
    content_type: str | None
    data: bytes


@dataclass
class StowResult:
    stored: list[tuple[str, str]] = field(default_factory=list)  # (SOP Class, SOP Instance)
    failed: list[Refused] = field(default_factory=list)

    @property
    def status_code(self) -> int:
        if not self.failed:
            return 200
        if self.stored:
            return 202
        if all(f.retry_later for f in self.failed):
            return 503  # the disk or the index is failing: the sender should retry later
        return 409

    def as_json(self) -> dict[str, Any]:
        response = Dataset()
        if self.stored:
            response.ReferencedSOPSequence = [
                _reference(sop_class, sop_instance) for sop_class, sop_instance in self.stored
            ]
        if self.failed:
            items = []
            for failure in self.failed:
                item = _reference(failure.sop_class_uid, failure.sop_instance_uid)
                item.FailureReason = failure.status
                items.append(item)
            response.FailedSOPSequence = items
        return response.to_json_dict()


def _reference(sop_class_uid: str | None, sop_instance_uid: str | None) -> Dataset:
    item = Dataset()
    # Bytes that aren't DICOM have neither; the item then carries only the reason.
    if sop_class_uid:
        item.ReferencedSOPClassUID = sop_class_uid
    if sop_instance_uid:
        item.ReferencedSOPInstanceUID = sop_instance_uid
    return item


class _PartCollector:
    """Callbacks for python-multipart's streaming parser; completed parts pile up in ``done``."""

    def __init__(self) -> None:
        self.done: list[_Part] = []
        self.count = 0
        self.in_part = False
        self._headers: dict[str, str] = {}
        self._field = bytearray()
        self._value = bytearray()
        self._data: list[bytes] = []

    def callbacks(self) -> MultipartCallbacks:
        return {
            "on_part_begin": self._begin,
            "on_header_field": self._header_field,
            "on_header_value": self._header_value,
            "on_header_end": self._header_end,
            "on_part_data": self._part_data,
            "on_part_end": self._end,
        }

    def _begin(self) -> None:
        self.in_part = True
        self.count += 1
        self._headers = {}
        self._data = []

    def _header_field(self, data: bytes, start: int, end: int) -> None:
        self._field += data[start:end]

    def _header_value(self, data: bytes, start: int, end: int) -> None:
        self._value += data[start:end]

    def _header_end(self) -> None:
        name = self._field.decode("latin-1").strip().lower()
        self._headers[name] = self._value.decode("latin-1").strip()
        self._field.clear()
        self._value.clear()

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        self._data.append(bytes(data[start:end]))

    def _end(self) -> None:
        self.in_part = False
        data = b"".join(self._data)
        self._data = []
        self.done.append(_Part(self.count, self._headers.get("content-type"), data))


def _media_type(value: str | None) -> str:
    media, _params = parse_options_header(value or "")
    return media.decode("latin-1").lower()


class _Storer:
    def __init__(self, ingest: Ingest, sender: str, study_uid: str | None) -> None:
        self.ingest = ingest
        self.sender = sender
        # The series records the sender where C-STORE records the calling AE title.
        self.calling_ae = sender if len(sender) <= _AE_TITLE_LENGTH else None
        self.study_uid = study_uid
        self.result = StowResult()
        self.received = ReceivedStudies()

    def store(self, part: _Part) -> None:
        """File one part (blocking: fsync and index); its outcome goes into ``result``."""
        where = f"STOW-RS part {part.number} from {self.sender}"
        media = _media_type(part.content_type) if part.content_type else DICOM_MEDIA_TYPE
        outcome: IngestOutcome
        if media == DICOM_MEDIA_TYPE:
            outcome = self.ingest.accept(
                part.data, calling_ae=self.calling_ae, into_study=self.study_uid
            )
        else:
            message = f"content type {media!r} is not {DICOM_MEDIA_TYPE}"
            outcome = Refused(Refusal.NOT_DICOM, message)
        if isinstance(outcome, Refused):
            if outcome.sop_instance_uid:
                where += f" (instance {outcome.sop_instance_uid})"
            outcome.report(log, where)
            self.result.failed.append(outcome)
            return
        log.debug(
            "filed %s (%s) from %s by STOW-RS", outcome.sop_instance_uid, outcome.filed, self.sender
        )
        self.result.stored.append((outcome.sop_class_uid, outcome.sop_instance_uid))
        self.received.add(outcome)

    def audit(self, audit: AuditLog) -> None:
        """One event per study the request delivered, as the SCP writes one per association."""
        self.received.record(audit, via="stow-rs", peer_address=self.sender)


def _error(status: int, detail: str) -> JSONResponse:
    return JSONResponse({"detail": detail}, status_code=status)


async def receive_stow(
    request: Request, ingest: Ingest, audit: AuditLog, study_uid: str | None
) -> Response:
    """Handle one STOW-RS request: file every part, answer with the Store Instances Response."""
    content_type = request.headers.get("content-type")
    media, params = parse_options_header(content_type or "")
    if media.decode("latin-1").lower() != "multipart/related":
        return _error(
            415, f'expected multipart/related; type="{DICOM_MEDIA_TYPE}", got {content_type!r}'
        )
    part_type = params.get(b"type", DICOM_MEDIA_TYPE.encode()).decode("latin-1").lower()
    if part_type != DICOM_MEDIA_TYPE:
        return _error(
            415, f"only {DICOM_MEDIA_TYPE} parts are accepted (type={part_type!r} was sent)"
        )
    boundary = params.get(b"boundary")
    if not boundary:
        return _error(400, "the multipart/related content type names no boundary")

    sender = request.client.host if request.client is not None else "unknown"
    storer = _Storer(ingest, sender, study_uid)
    collector = _PartCollector()
    parser = MultipartParser(boundary, collector.callbacks())
    problem: str | None = None
    try:
        async for chunk in request.stream():
            parser.write(chunk)
            while collector.done:
                await run_in_threadpool(storer.store, collector.done.pop(0))
        parser.finalize()
    except MultipartParseError as e:
        problem = f"the multipart body is malformed: {e}"
    except ClientDisconnect:
        log.warning(
            "STOW-RS from %s: the client went away after %d part(s)", sender, collector.count
        )
        storer.audit(audit)  # what was filed before it left stays filed
        raise
    for part in collector.done:  # parts completed by the last write before an error
        await run_in_threadpool(storer.store, part)
    storer.audit(audit)
    result = storer.result
    if problem is None and collector.in_part:
        problem = f"part {collector.count} was cut off before its closing boundary"
    if problem is not None:
        log.error("STOW-RS from %s: %s", sender, problem)
        if not result.stored:
            return _error(400, problem)
        result.failed.append(Refused(Refusal.NOT_DICOM, problem))
    if not result.stored and not result.failed:
        return _error(400, "the multipart body holds no parts")
    log.info(
        "STOW-RS from %s%s: %d instance(s) stored, %d refused",
        sender,
        f" into study {study_uid}" if study_uid else "",
        len(result.stored),
        len(result.failed),
    )
    return JSONResponse(result.as_json(), status_code=result.status_code, media_type=DICOM_JSON)
