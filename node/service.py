"""The serving node: SCP, HTTP API, completeness watcher and workers over one spool and index."""

from __future__ import annotations

import ipaddress
import logging
import os
import threading
from multiprocessing.context import SpawnProcess
from multiprocessing.synchronize import Event as MpEvent

from sqlalchemy import make_url

from node import __version__
from node.audit import AuditLog
from node.config import Settings
from node.dimse.scp import ListenError, StorageSCP
from node.dispatch.deliver import targets
from node.errors import reraised_as
from node.http.app import NodeView, WorkerCounts, create_app
from node.http.server import HttpServer
from node.metrics import prepare_metrics_dir
from node.pipeline.process import start_worker
from node.pipeline.worker import release_dead_local_workers
from node.priors.cache import PriorCache
from node.store.index import Index
from node.store.ingest import Ingest
from node.store.spool import Spool
from node.studies.completeness import CompletenessWatcher, pacs_count_query
from node.studies.pull import StudyPuller
from node.studies.watch import PullWatch

log = logging.getLogger(__name__)


# Shorter HTTP tokens are accepted with a warning; `openssl rand -hex 32` makes a good one.
MIN_TOKEN_LENGTH = 16


class StartupError(Exception):
    """The node can't start; the message names the setting to change."""


class NodeService:
    def __init__(self, settings: Settings, *, verbose: bool = False) -> None:
        self.settings = settings
        self.verbose = verbose
        data_dir = settings.node.data_dir
        data_dir.mkdir(parents=True, exist_ok=True)
        self.spool = Spool(data_dir / "spool")
        self.index = Index(settings.node.resolved_database_url)
        self.ingest = Ingest(
            self.spool, self.index, reopen_on_late=settings.node.late_arrivals == "rerun"
        )
        # Instances our own C-MOVEs asked for are priors: cached, never new work.
        priors = PriorCache(data_dir / "priors")
        self.scp = StorageSCP(settings.node, self.ingest, move_receiver=priors.file_moved)
        count_query = (
            pacs_count_query(settings.pacs, settings.node.ae_title) if settings.pacs else None
        )
        self.watcher = CompletenessWatcher(settings, self.index, count_query)
        self.ingest.on_new_instance = self.watcher.arrived
        audit = AuditLog.from_settings(settings.node)
        # Pulling studies from the PACS (HTTP and the watch share one puller).
        self.puller = StudyPuller(settings, self.ingest, audit) if settings.pacs else None
        self.pull_watch = (
            PullWatch(settings, self.puller)
            if self.puller is not None and settings.pacs and settings.pacs.watch.enabled
            else None
        )
        http_token = self._http_token()
        self.http_token_required = http_token is not None
        self.http = HttpServer(
            create_app(
                NodeView(
                    self.index,
                    self.ingest,
                    self.worker_counts,
                    audit,
                    puller=self.puller,
                ),
                http_token=http_token,
                viewer_url=settings.node.viewer_url,
                cors_origins=settings.node.cors_origins,
            ),
            settings.node.http_port,
            settings.node.http_host,
        )
        self._stop = threading.Event()
        self._watch_thread: threading.Thread | None = None
        self._pull_watch_thread: threading.Thread | None = None
        self._workers: dict[int, tuple[SpawnProcess, MpEvent]] = {}
        self.failure: str | None = None

    def start(self) -> None:
        self._log_summary()
        # Before anything counts: this process and the workers started below write their
        # counters where GET /metrics adds them up.
        prepare_metrics_dir(self.settings.node)
        self.ingest.reconcile()
        release_dead_local_workers(self.index)
        # Receive first: the PACS may route while the model is still loading.
        with reraised_as(ListenError, StartupError):
            self.scp.start()
        try:
            self.http.start()
        except OSError as e:
            raise StartupError(
                f"cannot listen on HTTP port {self.settings.node.http_port} "
                f"(node.http_port, on {self.settings.node.http_host}): {e.strerror or e}"
            ) from e
        self._watch_thread = threading.Thread(
            target=self.watcher.run, args=(self._stop,), name="completeness", daemon=True
        )
        self._watch_thread.start()
        if self.pull_watch is not None:
            self._pull_watch_thread = threading.Thread(
                target=self.pull_watch.run, args=(self._stop,), name="pull-watch", daemon=True
            )
            self._pull_watch_thread.start()
        for number in range(self.settings.node.workers):
            self._start_worker(number)

    def _http_token(self) -> str | None:
        """The HTTP bearer token from ``node.http_token_env``; None: HTTP asks for none."""
        name = self.settings.node.http_token_env
        token = os.environ.get(name, "").strip() if name else ""
        if token and len(token) < MIN_TOKEN_LENGTH:
            log.warning(
                "the HTTP token in $%s is shorter than %d characters: easy to guess",
                name,
                MIN_TOKEN_LENGTH,
            )
        return token or None

    def _log_http_access(self) -> None:
        node = self.settings.node
        if self.http_token_required:
            log.info(
                "HTTP asks for a bearer token (from $%s) on every route but /healthz",
                node.http_token_env,
            )
            return
        where = (
            f"${node.http_token_env} is unset or empty"
            if node.http_token_env
            else "node.http_token_env is null"
        )
        if _is_loopback(node.http_host):
            log.info("HTTP asks for no token (%s); it listens on loopback only", where)
        else:
            log.warning(
                "HTTP on %s asks for no token (%s): anyone who reaches port %d can read the "
                "worklist, retrieve studies with their patient data over DICOMweb and send "
                "studies; set a token or bind node.http_host to loopback",
                node.http_host,
                where,
                node.http_port,
            )

    def _log_summary(self) -> None:
        node, pacs = self.settings.node, self.settings.pacs
        database = make_url(node.resolved_database_url).render_as_string(hide_password=True)
        log.info(
            "medgemma-node %s: AE %s on %s port %d, data in %s, index %s, %d worker(s)",
            __version__,
            node.ae_title,
            node.host,
            node.port,
            node.data_dir,
            database,
            node.workers,
        )
        if pacs is not None:
            log.info("PACS %s at %s:%d", pacs.ae_title, pacs.host, pacs.port)
        destinations = targets(self.settings)
        if not destinations:
            log.warning("no destination configured: results stay in %s", node.data_dir / "results")
        for target in destinations:
            log.info("results go to %s: %s", target.describe(), ", ".join(sorted(target.outputs)))
        peers = ", ".join(p.ae_title for p in node.allowed_peers) or "any calling AE"
        log.info("accepting %s; outputs: %s", peers, ", ".join(self.settings.outputs))
        self._log_http_access()

    def _start_worker(self, number: int) -> None:
        self._workers[number] = start_worker(self.settings, number, self.verbose)

    def worker_counts(self) -> WorkerCounts:
        """How many worker processes run, and how many have their model loaded (for /healthz)."""
        workers = list(self._workers.values())  # a snapshot: supervise_once may replace one
        alive = [ready for process, ready in workers if process.is_alive()]
        return WorkerCounts(
            configured=self.settings.node.workers,
            alive=len(alive),
            ready=sum(1 for ready in alive if ready.is_set()),
        )

    def supervise_once(self) -> None:
        """Restart a worker that died after loading its model; stop the node if one never could."""
        for number, (process, ready) in list(self._workers.items()):
            if process.is_alive() or self._stop.is_set():
                continue
            if not ready.is_set():
                self.failure = f"worker {number} could not load the model (exit {process.exitcode})"
                log.critical("%s; stopping the node", self.failure)
                self._stop.set()
                return
            log.error("worker %d died (exit %s); restarting it", number, process.exitcode)
            release_dead_local_workers(self.index)
            self._start_worker(number)

    def wait(self) -> None:
        while not self._stop.wait(1.0):
            self.supervise_once()

    def request_stop(self) -> None:
        self._stop.set()
        self.watcher.wake()

    def stop(self) -> None:
        self.request_stop()
        self.http.stop()
        self.scp.stop()
        for process, _ready in self._workers.values():
            process.terminate()  # the worker finishes the job in hand, then exits
        for process, _ready in self._workers.values():
            process.join(timeout=30)
            if process.is_alive():
                process.kill()
        if self._watch_thread is not None:
            self._watch_thread.join(timeout=10)
        if self._pull_watch_thread is not None:
            # A pull in progress ends at pacs.retrieve_timeout_seconds; don't wait that long.
            self._pull_watch_thread.join(timeout=10)
        self.index.close()


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything
