"""WADO-RS handlers: what a retrieve touches, and its answer (PS3.18 10.4).

Called by the routes of :mod:`node.http.dicomweb`. The instances come from the catalog,
their files are read by :mod:`node.http.wado`, :mod:`node.http.metadata` and
:mod:`node.http.rendering`, and the readers' errors become HTTP statuses here (see
:func:`_or_http_error`). Multipart answers are streamed, one stored file at a time.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator, Sequence
from itertools import chain
from pathlib import Path
from typing import TypeVar

from fastapi import HTTPException, Request
from fastapi.responses import Response, StreamingResponse

from node.audit import AuditEvent, AuditLog, AuditValue
from node.http import media, metadata, qido_answers, rendering, wado
from node.http.media import (
    DICOM,
    DICOM_JSON,
    OCTET_STREAM,
    Multipart,
    NotAcceptable,
    accepted,
    dicomweb_root,
    peer,
    warning_header,
)
from node.store.catalog import Catalog
from node.store.catalog_records import InstanceRecord, NotInCatalog

log = logging.getLogger(__name__)

__all__ = ["Retrieval"]

# Missing files named in one Warning header at most; the rest are counted.
_NAMED_MISSING = 5

T = TypeVar("T")


class Retrieval:
    """The WADO-RS handlers, sharing the catalog and the audit trail."""

    def __init__(self, catalog: Catalog, audit: AuditLog) -> None:
        self.catalog = catalog
        self.audit = audit

    # -- what a retrieve touches -----------------------------------------------------------

    def held(
        self, study_uid: str, series_uid: str | None = None, sop_uid: str | None = None
    ) -> list[InstanceRecord]:
        try:
            return self.catalog.retrievable(study_uid, series_uid, sop_uid)
        except NotInCatalog as e:
            raise HTTPException(404, str(e)) from None

    def on_disk(self, records: list[InstanceRecord]) -> tuple[list[InstanceRecord], list[str]]:
        """The records whose files exist, and warnings naming those that don't (404: none)."""
        present = [r for r in records if Path(r.path).is_file()]
        missing = [r.sop_uid for r in records if r not in present]
        if not missing:
            return present, []
        log.warning(
            "DICOMweb: %d instance file(s) named by the index are missing from storage: %s",
            len(missing),
            ", ".join(missing),
        )
        named = ", ".join(missing[:_NAMED_MISSING])
        more = len(missing) - _NAMED_MISSING
        if not present:
            raise HTTPException(
                404,
                f"instance(s) {named}{f' and {more} more' if more > 0 else ''} are in the "
                "index but their files are missing from storage",
            )
        return present, [
            f"left out: instance(s) {named}{f' and {more} more' if more > 0 else ''} "
            "(in the index, but their files are missing from storage)"
        ]

    def audit_retrieve(
        self, request: Request, what: str, records: Sequence[InstanceRecord], **fields: AuditValue
    ) -> None:
        first = records[0]
        self.audit.record(
            AuditEvent.DICOMWEB_RETRIEVE,
            retrieved=what,
            study_uid=first.study_uid,
            series_uids=sorted({r.series_uid for r in records}),
            instances=len(records),
            peer_address=peer(request),
            **fields,
        )

    # -- WADO-RS: instances and metadata ---------------------------------------------------

    def instances(self, request: Request, records: list[InstanceRecord]) -> Response:
        present, warnings = self.on_disk(records)
        try:
            form = media.choose_dicom(accepted(request), [r.transfer_syntax_uid for r in present])
        except NotAcceptable as e:
            raise HTTPException(406, str(e)) from None
        self.audit_retrieve(request, "instances", present)
        status = 206 if warnings else 200

        def parts(record: InstanceRecord) -> tuple[str, Iterator[bytes]]:
            if form.transfer_syntax is None:
                syntax, chunks = record.transfer_syntax_uid, wado.file_chunks(record)
            else:
                syntax = form.transfer_syntax
                chunks = iter([wado.transcoded(record, syntax)])
            return f"{DICOM}; transfer-syntax={syntax}", chunks

        if not form.multipart:
            content_type, chunks = _or_http_error(lambda: parts(present[0]))
            return StreamingResponse(chunks, status, media_type=content_type)
        body = Multipart(DICOM)

        def stream() -> Iterator[bytes]:
            for record in present:
                try:
                    content_type, chunks = parts(record)
                except wado.StoredFileMissing as e:
                    log.warning("DICOMweb retrieve: %s; left out of the answer", e)
                    continue
                yield from body.part(content_type, chunks)
            yield body.end()

        return StreamingResponse(
            stream(), status, headers=warning_header(warnings), media_type=body.content_type
        )

    def metadata(self, request: Request, records: list[InstanceRecord]) -> Response:
        present, warnings = self.on_disk(records)
        try:
            media.choose_json(accepted(request))
        except NotAcceptable as e:
            raise HTTPException(406, str(e)) from None
        root = dicomweb_root(request)
        # Each instance is serialised at once: a list of 300 instances' dicts alive
        # together makes the garbage collector walk them again and again (2-3× slower).
        answers: list[bytes] = []
        for record in present:
            uids = (record.study_uid, record.series_uid, record.sop_uid)
            url = qido_answers.instance_url(root, *uids)
            try:
                answer = metadata.instance_metadata(record, url)
            except (wado.StoredFileMissing, wado.UnreadableInstance) as e:
                log.warning("DICOMweb metadata: %s; left out of the answer", e)
                warnings.append(f"left out: {e}")
                continue
            answers.append(json.dumps(answer, ensure_ascii=False).encode("utf-8"))
        if not answers:
            raise HTTPException(422 if present else 404, "; ".join(warnings))
        self.audit_retrieve(request, "metadata", present)
        return Response(
            b"[" + b",".join(answers) + b"]",
            206 if warnings else 200,
            headers=warning_header(warnings),
            media_type=DICOM_JSON,
        )

    # -- WADO-RS: frames and bulk data -------------------------------------------------------

    def frames(
        self, request: Request, record: InstanceRecord, indices: list[int] | None, what: str
    ) -> Response:
        """Frames (0-based ``indices``; None: every frame, the pixel data as bulk data)."""
        self.on_disk([record])
        if indices is None:
            count = _or_http_error(lambda: wado.frame_count(record))
            indices = list(range(count))
        try:
            choice = media.choose_frames(
                accepted(request), record.transfer_syntax_uid, count=len(indices)
            )
        except NotAcceptable as e:
            raise HTTPException(406, str(e)) from None
        part_type, frames = _or_http_error(lambda: wado.read_frames(record, indices, choice.form))
        # The first frame is read before answering: an unreadable one is an error status.
        first = _or_http_error(lambda: next(frames))
        self.audit_retrieve(
            request,
            what,
            [record],
            sop_instance_uid=record.sop_uid,
            frames=[i + 1 for i in indices],
        )
        if not choice.multipart:
            return Response(first[1], media_type=first[0])
        body = Multipart(part_type)

        def stream() -> Iterator[bytes]:
            for content_type, data in chain([first], frames):
                yield from body.part(content_type, [data])
            yield body.end()

        return StreamingResponse(stream(), media_type=body.content_type)

    def bulk_data(self, request: Request, record: InstanceRecord, location_text: str) -> Response:
        try:
            location = wado.parse_bulk_location(location_text)
        except ValueError as e:
            raise HTTPException(400, str(e)) from None
        if wado.is_pixel_data(location):
            return self.frames(request, record, None, "bulkdata")
        self.on_disk([record])
        try:
            multipart = media.choose_octets(accepted(request))
        except NotAcceptable as e:
            raise HTTPException(406, str(e)) from None
        value = _or_http_error(lambda: wado.bulk_value(record, location))
        self.audit_retrieve(request, "bulkdata", [record], sop_instance_uid=record.sop_uid)
        if not multipart:
            return Response(value, media_type=OCTET_STREAM)
        body = Multipart(OCTET_STREAM)
        content = b"".join([*body.part(OCTET_STREAM, [value]), body.end()])
        return Response(content, media_type=body.content_type)

    # -- WADO-RS: rendered and thumbnail ---------------------------------------------------

    def rendered(
        self,
        request: Request,
        record: InstanceRecord,
        frame_text: str | None,
        *,
        thumbnail: bool,
    ) -> Response:
        self.on_disk([record])
        index = 0
        if frame_text is not None:
            try:
                indices = wado.parse_frame_list(frame_text)
            except ValueError as e:
                raise HTTPException(400, str(e)) from None
            if len(indices) != 1:
                raise HTTPException(
                    400, f"frames {frame_text}: a rendered picture shows one frame; ask for one"
                )
            index = indices[0]
        try:
            image_type = media.choose_image(accepted(request))
            asked, warnings = rendering.parse_rendering(list(request.query_params.multi_items()))
        except NotAcceptable as e:
            raise HTTPException(406, str(e)) from None
        except rendering.BadRendering as e:
            raise HTTPException(400, str(e)) from None
        side = rendering.THUMBNAIL_SIDE if thumbnail else None
        picture = _or_http_error(
            lambda: rendering.render_frame(record, index, image_type, asked, max_side=side)
        )
        self.audit_retrieve(
            request,
            "thumbnail" if thumbnail else "rendered",
            [record],
            sop_instance_uid=record.sop_uid,
            frames=[index + 1],
        )
        return Response(picture, media_type=image_type.value, headers=warning_header(warnings))

    def representative(self, records: list[InstanceRecord]) -> InstanceRecord:
        """The instance a study's or series' thumbnail shows: the middle image of the first
        series with images (received images before the node's own results)."""
        images = [r for r in records if r.rows and r.columns]
        if not images:
            raise HTTPException(
                404, f"study {records[0].study_uid}: no image to make a thumbnail from"
            )
        received = [r for r in images if not r.is_result] or images
        series = [r for r in received if r.series_uid == received[0].series_uid]
        return series[len(series) // 2]


def _or_http_error(produce: Callable[[], T]) -> T:
    """Run a reader, turning its errors into the statuses the module docstring lists."""
    try:
        return produce()
    except (wado.NoSuchData, wado.StoredFileMissing) as e:
        raise HTTPException(404, str(e)) from None
    except rendering.BadRendering as e:
        raise HTTPException(400, str(e)) from None
    except (wado.UnreadableInstance, ValueError, OSError) as e:
        log.warning("DICOMweb: %s", e)
        raise HTTPException(422, str(e)) from None
