"""DICOMweb routes for what the node holds: QIDO-RS search and WADO-RS retrieve.

Mounted under ``/dicom-web`` on the protected router (the bearer token, when one is
configured); STOW-RS (POST) stays in :mod:`node.http.stow`. Each route only translates:
queries are parsed by :mod:`node.http.qido` and answered by
:class:`node.store.catalog.Catalog`; retrieves are handled by
:class:`node.http.retrieve.Retrieval`. Errors become HTTP statuses: 400 a malformed
request (naming the parameter), 404 a UID, frame or bulk data item the node doesn't hold
(naming it), 406 an Accept the node can't satisfy (naming what it can send), 422 a
stored file that can't be read or decoded.

A stored file that vanished behind the index's back is left out of a study or series
(206 Partial Content, a Warning header naming it; 404 when nothing is left). Every
search and retrieve is one audit event; patient values of a query are withheld unless
``node.log_phi``.
"""

from __future__ import annotations

import json
from enum import StrEnum
from typing import Any

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import Response

from node.audit import AuditEvent, AuditLog
from node.http import media, qido, qido_answers, wado
from node.http.media import (
    DICOM_JSON,
    ROOT,
    NotAcceptable,
    accepted,
    dicomweb_root,
    peer,
    warning_header,
)
from node.http.qido import BadQuery, Query, QueryLevel
from node.http.retrieve import Retrieval
from node.store.catalog import Catalog

__all__ = ["ROOT", "dicomweb_router"]


class Resource(StrEnum):
    """What a QIDO-RS search over everything the node holds asks for."""

    STUDIES = "studies"
    SERIES = "series"
    INSTANCES = "instances"


_LEVEL_OF = {
    Resource.STUDIES: QueryLevel.STUDY,
    Resource.SERIES: QueryLevel.SERIES,
    Resource.INSTANCES: QueryLevel.INSTANCE,
}


class Rendition(StrEnum):
    """The two consumer-ready forms of an image WADO-RS serves (PS3.18 10.4.1.1.3)."""

    RENDERED = "rendered"
    THUMBNAIL = "thumbnail"  # the same, within 256×256 unless a viewport says otherwise


class _Search:
    """The QIDO-RS handler."""

    def __init__(self, catalog: Catalog, audit: AuditLog) -> None:
        self.catalog = catalog
        self.audit = audit

    def __call__(
        self,
        request: Request,
        level: QueryLevel,
        study_uid: str | None = None,
        series_uid: str | None = None,
    ) -> Response:
        try:
            media.choose_json(accepted(request))
            query = qido.parse_query(
                level,
                list(request.query_params.multi_items()),
                study_uid=study_uid,
                series_uid=series_uid,
                show_patient=self.audit.log_phi,
            )
        except BadQuery as e:
            raise HTTPException(400, str(e)) from None
        except NotAcceptable as e:
            raise HTTPException(406, str(e)) from None
        answers, more = self._matches(query, dicomweb_root(request))
        warnings = list(query.warnings)
        if more:
            warnings.append(
                "there are more matches than this answer holds; ask again with offset="
                f"{query.page.offset + query.page.limit}"
            )
        self.audit.record(
            AuditEvent.DICOMWEB_QUERY,
            level=level.value,
            study_uid=study_uid,
            series_uid=series_uid,
            query=list(query.described),
            matches=len(answers),
            peer_address=peer(request),
        )
        if not answers:
            return Response(status_code=204, headers=warning_header(warnings))
        return Response(
            json.dumps(answers, ensure_ascii=False).encode("utf-8"),
            media_type=DICOM_JSON,
            headers=warning_header(warnings),
        )

    def _matches(self, query: Query, root: str) -> tuple[list[dict[str, Any]], bool]:
        if query.level is QueryLevel.STUDY:
            studies = self.catalog.search_studies(query.filters, query.page)
            return [qido_answers.study_json(r, query, root) for r in studies.records], studies.more
        if query.level is QueryLevel.SERIES:
            series = self.catalog.search_series(query.filters, query.page)
            return [qido_answers.series_json(r, query, root) for r in series.records], series.more
        found = self.catalog.search_instances(query.filters, query.page)
        return [qido_answers.instance_json(r, query, root) for r in found.records], found.more


def dicomweb_router(catalog: Catalog, audit: AuditLog) -> APIRouter:
    """QIDO-RS and WADO-RS under /dicom-web; include it in a router that checks the token."""
    search = _Search(catalog, audit)
    routes = Retrieval(catalog, audit)
    router = APIRouter(prefix=ROOT, tags=["DICOMweb"])
    study = "/studies/{study_uid}"
    series = study + "/series/{series_uid}"
    instance = series + "/instances/{sop_uid}"

    # QIDO-RS: /studies, /series, /instances, then the searches within a study or series
    @router.get("/{resource}")
    def search_all(request: Request, resource: Resource) -> Response:
        return search(request, _LEVEL_OF[resource])

    @router.get(study + "/series")
    def search_study_series(request: Request, study_uid: str) -> Response:
        return search(request, QueryLevel.SERIES, study_uid)

    @router.get(series + "/instances")
    def search_series_instances(request: Request, study_uid: str, series_uid: str) -> Response:
        return search(request, QueryLevel.INSTANCE, study_uid, series_uid)

    @router.get(study + "/instances")
    def search_study_instances(request: Request, study_uid: str) -> Response:
        return search(request, QueryLevel.INSTANCE, study_uid)

    # WADO-RS: instances and metadata
    @router.get(study)
    def retrieve_study(request: Request, study_uid: str) -> Response:
        return routes.instances(request, routes.held(study_uid))

    @router.get(series)
    def retrieve_series(request: Request, study_uid: str, series_uid: str) -> Response:
        return routes.instances(request, routes.held(study_uid, series_uid))

    @router.get(instance)
    def retrieve_instance(
        request: Request, study_uid: str, series_uid: str, sop_uid: str
    ) -> Response:
        return routes.instances(request, routes.held(study_uid, series_uid, sop_uid))

    @router.get(study + "/metadata")
    def study_metadata(request: Request, study_uid: str) -> Response:
        return routes.metadata(request, routes.held(study_uid))

    @router.get(series + "/metadata")
    def series_metadata(request: Request, study_uid: str, series_uid: str) -> Response:
        return routes.metadata(request, routes.held(study_uid, series_uid))

    @router.get(instance + "/metadata")
    def instance_metadata(
        request: Request, study_uid: str, series_uid: str, sop_uid: str
    ) -> Response:
        return routes.metadata(request, routes.held(study_uid, series_uid, sop_uid))

    # WADO-RS: frames and bulk data
    @router.get(instance + "/frames/{frame_list}")
    def frames(
        request: Request, study_uid: str, series_uid: str, sop_uid: str, frame_list: str
    ) -> Response:
        (record,) = routes.held(study_uid, series_uid, sop_uid)
        try:
            indices = wado.parse_frame_list(frame_list)
        except ValueError as e:
            raise HTTPException(400, str(e)) from None
        return routes.frames(request, record, indices, "frames")

    @router.get(instance + "/bulkdata/{location:path}")
    def bulk_data(
        request: Request, study_uid: str, series_uid: str, sop_uid: str, location: str
    ) -> Response:
        (record,) = routes.held(study_uid, series_uid, sop_uid)
        return routes.bulk_data(request, record, location)

    # WADO-RS: rendered and thumbnail (after /metadata, which the first would otherwise take)
    @router.get(instance + "/{rendition}")
    def rendered(
        request: Request, study_uid: str, series_uid: str, sop_uid: str, rendition: Rendition
    ) -> Response:
        (record,) = routes.held(study_uid, series_uid, sop_uid)
        return routes.rendered(request, record, None, thumbnail=rendition is Rendition.THUMBNAIL)

    @router.get(instance + "/frames/{frame_list}/{rendition}")
    def rendered_frame(
        request: Request,
        study_uid: str,
        series_uid: str,
        sop_uid: str,
        frame_list: str,
        rendition: Rendition,
    ) -> Response:
        (record,) = routes.held(study_uid, series_uid, sop_uid)
        thumbnail = rendition is Rendition.THUMBNAIL
        return routes.rendered(request, record, frame_list, thumbnail=thumbnail)

    @router.get(series + "/thumbnail")
    def series_thumbnail(request: Request, study_uid: str, series_uid: str) -> Response:
        record = routes.representative(routes.held(study_uid, series_uid))
        return routes.rendered(request, record, None, thumbnail=True)

    @router.get(study + "/thumbnail")
    def study_thumbnail(request: Request, study_uid: str) -> Response:
        record = routes.representative(routes.held(study_uid))
        return routes.rendered(request, record, None, thumbnail=True)

    return router
