"""STOW-RS input (PS3.18 10.5): DICOMweb senders store instances through the C-STORE ingest path.

Each ``application/dicom`` part of the ``multipart/related`` body is a Part 10 file and
goes through :meth:`node.store.ingest.Ingest.accept`: fsynced into the spool, indexed,
completeness rules unchanged. The body is parsed as it streams in (python-multipart's
boundary parser), so only one part is held in memory at a time. Failures become the
C-STORE failure statuses the SCP uses, in the response's Failed SOP Sequence; the HTTP
status is 200 (all stored), 202 (some stored), 409 (none stored), 400 (not a multipart
body), 415 (not ``application/dicom`` parts).

There is no calling AE: the sender recorded with the series is the client's address
(when it fits an AE title's 16 characters), and ``node.allowed_peers`` doesn't apply.
As for C-STORE, refusals are counted by reason (``metrics.instance_refused``) and each
study a request delivered is one ``study-received`` audit event (``via: stow-rs``).
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

from node import metrics
from node.audit import AuditEvent, AuditLog
from node.dimse.scp import CANNOT_UNDERSTAND, DATASET_DOES_NOT_MATCH_SOP_CLASS, OUT_OF_RESOURCES
from node.store.ingest import Ingest, NotFiled, read_header
from node.store.meta import InvalidInstance, UnreadableData

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


@dataclass(frozen=True)
class _Failure:
    sop_class_uid: str | None
    sop_instance_uid: str | None
    reason: int


@dataclass
class StowResult:
    stored: list[tuple[str, str]] = field(default_factory=list)  # (SOP Class, SOP Instance)
    failed: list[_Failure] = field(default_factory=list)

    @property
    def status_code(self) -> int:
        if not self.failed:
            return 200
        if self.stored:
            return 202
        if all(f.reason == OUT_OF_RESOURCES for f in self.failed):
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
                item.FailureReason = failure.reason
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


@dataclass
class _Received:
    """What one request delivered of one study (audited as DICOM's "instances transferred")."""

    instances: int = 0
    patient_id: str | None = None  # audited only with node.log_phi


class _Storer:
    def __init__(self, ingest: Ingest, sender: str, study_uid: str | None) -> None:
        self.ingest = ingest
        self.sender = sender
        # The series records the sender where C-STORE records the calling AE title.
        self.calling_ae = sender if len(sender) <= _AE_TITLE_LENGTH else None
        self.study_uid = study_uid
        self.result = StowResult()
        self.received: dict[str, _Received] = {}

    def _refuse(self, failure: _Failure, metric_reason: str) -> None:
        self.result.failed.append(failure)
        metrics.instance_refused(metric_reason)

    def store(self, part: _Part) -> None:
        """File one part (blocking: fsync and index); its outcome goes into ``result``."""
        where = f"STOW-RS part {part.number} from {self.sender}"
        media = _media_type(part.content_type) if part.content_type else DICOM_MEDIA_TYPE
        if media != DICOM_MEDIA_TYPE:
            log.error("%s refused: content type %r is not %s", where, media, DICOM_MEDIA_TYPE)
            self._refuse(_Failure(None, None, CANNOT_UNDERSTAND), "unreadable")
            return
        try:
            header = read_header(part.data)
        except UnreadableData as e:
            log.error("%s refused: %s", where, e)
            self._refuse(_Failure(None, None, CANNOT_UNDERSTAND), "unreadable")
            return
        sop_class = str(header.get("SOPClassUID", "")) or None
        sop_instance = str(header.get("SOPInstanceUID", "")) or None
        study = str(header.get("StudyInstanceUID", ""))
        if self.study_uid is not None and study != self.study_uid:
            log.error(
                "%s refused: instance %s is in study %s, not the request's %s",
                where,
                sop_instance,
                study or "(none)",
                self.study_uid,
            )
            self._refuse(
                _Failure(sop_class, sop_instance, DATASET_DOES_NOT_MATCH_SOP_CLASS), "invalid"
            )
            return
        try:
            meta, filed = self.ingest.accept(part.data, calling_ae=self.calling_ae)
        except InvalidInstance as e:
            log.error("%s (instance %s) refused: %s", where, sop_instance, e)
            unreadable = isinstance(e, UnreadableData)
            reason = CANNOT_UNDERSTAND if unreadable else DATASET_DOES_NOT_MATCH_SOP_CLASS
            self._refuse(
                _Failure(sop_class, sop_instance, reason), "unreadable" if unreadable else "invalid"
            )
            return
        except NotFiled as e:
            # Disk full, database down: the sender keeps the instance and retries later.
            log.error("%s (instance %s) not filed: %s", where, sop_instance, e)
            self._refuse(_Failure(sop_class, sop_instance, OUT_OF_RESOURCES), "not-filed")
            return
        except Exception:
            log.exception("%s (instance %s) could not be filed", where, sop_instance)
            self._refuse(_Failure(sop_class, sop_instance, OUT_OF_RESOURCES), "not-filed")
            return
        log.debug("filed %s (%s) from %s by STOW-RS", meta.sop_uid, filed, self.sender)
        self.result.stored.append((meta.sop_class_uid, meta.sop_uid))
        received = self.received.setdefault(meta.study_uid, _Received())
        received.instances += 1
        received.patient_id = received.patient_id or meta.patient_id

    def audit(self, audit: AuditLog) -> None:
        """One event per study the request delivered, as the SCP writes one per association."""
        for study_uid, received in self.received.items():
            phi = {"patient_id": received.patient_id} if audit.log_phi else {}
            audit.record(
                AuditEvent.STUDY_RECEIVED,
                study_uid=study_uid,
                instances=received.instances,
                prior=False,
                via="stow-rs",
                peer_address=self.sender,
                **phi,
            )


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
        result.failed.append(_Failure(None, None, CANNOT_UNDERSTAND))
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
