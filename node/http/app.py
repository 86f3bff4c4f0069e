"""The node's HTTP API: health, metrics, the worklist (JSON and page), reprocess, STOW-RS input.

Routes only translate: each calls the index, the ingest path or a renderer and turns
their errors into an HTTP status at this boundary, as the SCP turns them into DIMSE
statuses. Nothing here needs a patient attribute, and none is returned.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from typing import Annotated, Any

from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from node import __version__
from node.audit import AuditEvent, AuditLog
from node.http.images import ImageUnavailable, ImageUnrenderable, JobImages
from node.http.stow import receive_stow
from node.http.worklist import FILTER_STATES, ResultHeaders, list_studies
from node.metrics import render_metrics
from node.store.index import Index
from node.store.ingest import Ingest

log = logging.getLogger(__name__)

__all__ = ["NodeView", "WorkerCounts", "create_app"]


@dataclass(frozen=True)
class WorkerCounts:
    configured: int
    alive: int  # processes running (loading the model or working)
    ready: int  # of those, the ones whose model has loaded


@dataclass(frozen=True)
class NodeView:
    """What the HTTP API may see of the running node."""

    index: Index
    ingest: Ingest
    workers: Callable[[], WorkerCounts]
    audit: AuditLog


def _database_reachable(index: Index) -> bool:
    try:
        with index.engine.connect() as connection:
            connection.execute(text("SELECT 1"))
    except (SQLAlchemyError, OSError) as e:
        log.warning("health check: the index database is unreachable: %s", e)
        return False
    return True


def create_app(view: NodeView) -> FastAPI:
    """The ASGI application; served by :class:`node.http.server.HttpServer`."""
    # No /docs or /redoc: they load their scripts from a CDN, and the node has no network.
    app = FastAPI(
        title="medgemma-node",
        version=__version__,
        docs_url=None,
        redoc_url=None,
        description="NOT FOR DIAGNOSTIC USE. AI findings are UNVERIFIED.",
    )
    results = ResultHeaders()
    images = JobImages(view.index)
    page = resources.files("node.http").joinpath("worklist.html").read_text(encoding="utf-8")

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def worklist_page() -> HTMLResponse:
        return HTMLResponse(page, headers={"Cache-Control": "no-cache"})

    @app.get("/healthz")
    def healthz() -> JSONResponse:
        reachable = _database_reachable(view.index)
        workers = view.workers()
        healthy = reachable and workers.alive > 0
        body = {
            "status": "ok" if healthy else "unavailable",
            "version": __version__,
            "database_reachable": reachable,
            "workers_configured": workers.configured,
            "workers_alive": workers.alive,
            "workers_ready": workers.ready,
        }
        return JSONResponse(body, status_code=200 if healthy else 503)

    @app.get("/metrics")
    def metrics() -> Response:
        body, content_type = render_metrics(view.index)
        return Response(body, media_type=content_type)

    @app.get("/api/studies")
    def studies(
        state: Annotated[
            str | None, Query(description=f"one of: {', '.join(FILTER_STATES)}")
        ] = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    ) -> list[dict[str, Any]]:
        if state is not None and state not in FILTER_STATES:
            raise HTTPException(422, f"state {state!r} is none of: {', '.join(FILTER_STATES)}")
        return list_studies(view.index, results, state=state, limit=limit)

    @app.post("/api/studies/{study_uid}/reprocess", status_code=202)
    def reprocess(study_uid: str, request: Request) -> dict[str, Any]:
        try:
            job_ids = view.index.reprocess(study_uid)
        except KeyError:
            raise HTTPException(404, f"study {study_uid} is not in the index") from None
        if not job_ids:
            raise HTTPException(
                409,
                f"study {study_uid} has no finished job to run again "
                "(its jobs are still queued or running, or it was never routed)",
            )
        client = request.client.host if request.client else "unknown"
        log.info("study %s reprocessed at the request of %s: job(s) %s", study_uid, client, job_ids)
        view.audit.record(
            AuditEvent.REPROCESS_REQUESTED,
            study_uid=study_uid,
            job_ids=job_ids,
            via="http",
            peer_address=client,
        )
        return {"study_instance_uid": study_uid, "jobs": job_ids}

    @app.get("/api/jobs/{job_id}/image.png")
    def job_image(job_id: int) -> Response:
        try:
            png = images.png(job_id)
        except ImageUnavailable as e:
            raise HTTPException(404, str(e)) from None
        except ImageUnrenderable as e:
            raise HTTPException(422, str(e)) from None
        # A job's picture never changes; a reprocessed study gets new job ids.
        return Response(png, media_type="image/png", headers={"Cache-Control": "max-age=3600"})

    @app.post("/dicom-web/studies")
    async def stow(request: Request) -> Response:
        return await receive_stow(request, view.ingest, view.audit, None)

    @app.post("/dicom-web/studies/{study_uid}")
    async def stow_into_study(study_uid: str, request: Request) -> Response:
        return await receive_stow(request, view.ingest, view.audit, study_uid)

    return app
