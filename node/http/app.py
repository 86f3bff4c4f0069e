"""The node's HTTP API: health, metrics, the worklist (JSON and page), reprocess, STOW-RS input.

Routes only translate: each calls the index, the ingest path or a renderer and turns
their errors into an HTTP status at this boundary, as the SCP turns them into DIMSE
statuses. The JSON routes declare their answers' models (:mod:`node.http.schemas`) as
``response_model``, so ``/openapi.json`` documents them. Patient attributes are returned
by ``/api/studies`` only when a token is configured (every request then passed it);
without one they are left out (null).

With a bearer token configured every route but ``/healthz`` asks for it (:class:`BearerAuth`,
a FastAPI dependency): in the ``Authorization`` header, or as the cookie the worklist page
sets when a browser opens it once as ``/?token=…``.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Query, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.security import APIKeyCookie, HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from node import __version__
from node.audit import AuditEvent, AuditLog
from node.http.dicomweb import dicomweb_router
from node.http.images import ImageUnavailable, ImageUnrenderable, JobImages
from node.http.schemas import Health, PullAccepted, ReprocessAccepted, StudyItem
from node.http.stow import receive_stow
from node.http.worklist import (
    FILTER_STATES,
    ResultHeaders,
    filter_state,
    list_studies,
    worklist_page_html,
)
from node.metrics import render_metrics
from node.store.catalog import Catalog
from node.store.index import Index
from node.store.ingest import Ingest
from node.studies.pull import (
    InvalidStudyUid,
    NothingFiled,
    PullUnavailable,
    StudyNotAtPacs,
    StudyPuller,
)

log = logging.getLogger(__name__)

__all__ = ["TOKEN_COOKIE", "BearerAuth", "NodeView", "WorkerCounts", "create_app"]

# The worklist page's cookie: an HMAC of the token (never the token itself), HttpOnly,
# SameSite=Strict, for as long as the browser runs.
TOKEN_COOKIE = "medgemma_token"
_COOKIE_LABEL = b"medgemma-node worklist cookie v1"
_REALM = 'Bearer realm="medgemma-node"'

# Where a request may carry the token; module-level so the annotations below resolve.
_BEARER = HTTPBearer(auto_error=False, description="the token in node.http_token_env")
_COOKIE = APIKeyCookie(
    name=TOKEN_COOKIE, auto_error=False, description="set by opening /?token=<token>"
)
BearerCredentials = Annotated[HTTPAuthorizationCredentials | None, Depends(_BEARER)]
TokenCookie = Annotated[str | None, Depends(_COOKIE)]


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
    puller: StudyPuller | None = None  # None: no pacs configured, nothing to pull from


def _database_reachable(index: Index) -> bool:
    try:
        with index.engine.connect() as connection:
            connection.execute(text("SELECT 1"))
    except (SQLAlchemyError, OSError) as e:
        log.warning("health check: the index database is unreachable: %s", e)
        return False
    return True


class BearerAuth:
    """Checks the HTTP bearer token; with no token configured it lets everything through.

    Accepted: ``Authorization: Bearer <token>``, or the cookie set by :meth:`set_cookie`
    (a browser can't add a header to the worklist page's ``<img>`` requests). Both are
    compared in constant time.
    """

    def __init__(self, token: str | None) -> None:
        self._token = token.encode("utf-8") if token else None
        self._cookie = (
            hmac.new(self._token, _COOKIE_LABEL, hashlib.sha256).hexdigest().encode("ascii")
            if self._token is not None
            else None
        )

    @property
    def required(self) -> bool:
        return self._token is not None

    def token_matches(self, presented: str) -> bool:
        return self._token is not None and secrets.compare_digest(
            presented.encode("utf-8"), self._token
        )

    def cookie_matches(self, presented: str) -> bool:
        return self._cookie is not None and secrets.compare_digest(
            presented.encode("utf-8"), self._cookie
        )

    def check(self, request: Request, token: str | None, cookie: str | None) -> None:
        """Raise 401 unless the header's token or the cookie is right (or none is needed)."""
        if self._token is None:
            return
        if token is not None and self.token_matches(token):
            return
        if cookie is not None and self.cookie_matches(cookie):
            return
        raise self.refusal(request, wrong=token is not None or cookie is not None)

    def refusal(self, request: Request, *, wrong: bool) -> HTTPException:
        client = request.client.host if request.client else "unknown"
        if wrong:
            log.warning(
                "refused HTTP %s %s from %s: wrong bearer token or cookie",
                request.method,
                request.url.path,
                client,
            )
            challenge = f'{_REALM}, error="invalid_token"'
        else:
            log.debug(
                "refused HTTP %s %s from %s: no token", request.method, request.url.path, client
            )
            challenge = _REALM
        return HTTPException(
            401,
            "a bearer token is required: send 'Authorization: Bearer <token>', "
            "or open /?token=<token> once in a browser",
            headers={"WWW-Authenticate": challenge},
        )

    def set_cookie(self, response: Response) -> None:
        assert self._cookie is not None
        # No Secure flag: the node serves plain HTTP (put a TLS proxy in front on open networks).
        response.set_cookie(
            TOKEN_COOKIE, self._cookie.decode("ascii"), httponly=True, samesite="strict", path="/"
        )


def create_app(
    view: NodeView,
    *,
    http_token: str | None = None,
    viewer_url: str | None = None,
    cors_origins: list[str] | None = None,
) -> FastAPI:
    """The ASGI application; served by :class:`node.http.server.HttpServer`.

    ``http_token``: the bearer token every route but ``/healthz`` asks for; None: none.
    ``viewer_url``: ``node.viewer_url``, the worklist's "Open in viewer" link; None: none.
    ``cors_origins``: ``node.cors_origins``, web origins whose pages may call the node from
    a browser (a viewer on another host); None or empty: none.
    """
    # No /docs or /redoc: they load their scripts from a CDN, and the node has no network.
    # /openapi.json is served below, behind the token like everything else.
    app = FastAPI(
        title="medgemma-node",
        version=__version__,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
        description="NOT FOR DIAGNOSTIC USE. AI findings are UNVERIFIED.",
    )
    results = ResultHeaders()
    images = JobImages(view.index)
    page = worklist_page_html()
    auth = BearerAuth(http_token)

    def require_token(
        request: Request, credentials: BearerCredentials, session: TokenCookie
    ) -> None:
        auth.check(request, credentials.credentials if credentials else None, session)

    api = APIRouter(dependencies=[Depends(require_token)])

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def worklist_page(
        request: Request,
        credentials: BearerCredentials,
        session: TokenCookie,
        token: Annotated[str | None, Query(include_in_schema=False)] = None,
    ) -> HTMLResponse:
        if token is None or not auth.required:
            auth.check(request, credentials.credentials if credentials else None, session)
            return HTMLResponse(page, headers={"Cache-Control": "no-cache"})
        # Opened once with the token in the URL: the page's later requests carry the cookie,
        # and its script takes the token out of the address bar.
        if not auth.token_matches(token):
            raise auth.refusal(request, wrong=True)
        response = HTMLResponse(
            page, headers={"Cache-Control": "no-store", "Referrer-Policy": "no-referrer"}
        )
        auth.set_cookie(response)
        return response

    @app.get("/healthz", response_model=Health, responses={503: {"model": Health}})
    def healthz(response: Response) -> Health:
        reachable = _database_reachable(view.index)
        workers = view.workers()
        healthy = reachable and workers.alive > 0
        response.status_code = 200 if healthy else 503
        return Health(
            status="ok" if healthy else "unavailable",
            version=__version__,
            database_reachable=reachable,
            workers_configured=workers.configured,
            workers_alive=workers.alive,
            workers_ready=workers.ready,
        )

    @api.get("/metrics")
    def metrics() -> Response:
        body, content_type = render_metrics(view.index)
        return Response(body, media_type=content_type)

    @api.get("/api/studies", response_model=list[StudyItem])
    def studies(
        # Checked here rather than typed as the enums, so that the 422 names the value.
        state: Annotated[
            str | None,
            Query(
                description="a study state (studies in it) or a job state (studies with a "
                "job in it)",
                json_schema_extra={"enum": [str(state) for state in FILTER_STATES]},
            ),
        ] = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    ) -> list[StudyItem]:
        try:
            wanted = filter_state(state)
        except ValueError as e:
            raise HTTPException(422, str(e)) from None
        # Patient data only behind a token: with one configured, this request passed it.
        return list_studies(
            view.index,
            results,
            state=wanted,
            limit=limit,
            show_patient=auth.required,
            viewer_url=viewer_url,
        )

    @api.post(
        "/api/studies/{study_uid}/reprocess", status_code=202, response_model=ReprocessAccepted
    )
    def reprocess(study_uid: str, request: Request) -> ReprocessAccepted:
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
        return ReprocessAccepted(study_instance_uid=study_uid, jobs=job_ids)

    @api.post("/api/studies/{study_uid}/process", status_code=202, response_model=PullAccepted)
    def process(study_uid: str, request: Request) -> PullAccepted:
        """Fetch the study from the PACS, file it as received, and route it now."""
        if view.puller is None:
            raise HTTPException(
                409, f"no pacs is configured: there is nowhere to pull study {study_uid} from"
            )
        client = request.client.host if request.client else "unknown"
        try:
            outcome = view.puller.pull(study_uid, via="http", peer_address=client)
        except InvalidStudyUid as e:
            raise HTTPException(422, str(e)) from None
        except StudyNotAtPacs as e:
            raise HTTPException(404, str(e)) from None
        except PullUnavailable as e:
            log.warning("pull of study %s asked by %s failed: %s", study_uid, client, e)
            raise HTTPException(503, str(e)) from None
        except NothingFiled as e:
            log.warning("pull of study %s asked by %s: %s", study_uid, client, e)
            raise HTTPException(502, str(e)) from None
        return PullAccepted.model_validate(outcome.as_json())

    @api.get("/api/jobs/{job_id}/image.png")
    def job_image(job_id: int) -> Response:
        try:
            png = images.png(job_id)
        except ImageUnavailable as e:
            raise HTTPException(404, str(e)) from None
        except ImageUnrenderable as e:
            raise HTTPException(422, str(e)) from None
        # A job's picture never changes; a reprocessed study gets new job ids. It is a
        # patient's image: the browser may keep it, a shared cache may not.
        return Response(
            png, media_type="image/png", headers={"Cache-Control": "private, max-age=3600"}
        )

    @api.post("/dicom-web/studies")
    async def stow(request: Request) -> Response:
        return await receive_stow(request, view.ingest, view.audit, None)

    @api.post("/dicom-web/studies/{study_uid}")
    async def stow_into_study(study_uid: str, request: Request) -> Response:
        return await receive_stow(request, view.ingest, view.audit, study_uid)

    # QIDO-RS and WADO-RS (GET) beside STOW-RS (POST, above), behind the token.
    api.include_router(dicomweb_router(Catalog(view.index.engine), view.audit))

    @api.get("/openapi.json", include_in_schema=False)
    def openapi() -> JSONResponse:
        return JSONResponse(app.openapi())

    app.include_router(api)
    if cors_origins:
        # Preflights are answered before routing, so they need no token; the requests
        # that follow carry it. Warning is exposed: QIDO-RS and WADO-RS say things there.
        app.add_middleware(
            CORSMiddleware,
            allow_origins=cors_origins,
            allow_methods=["GET", "HEAD", "POST"],
            allow_headers=["Authorization", "Accept", "Content-Type"],
            expose_headers=["Warning", "Content-Type"],
        )
    return app
