"""The serving node: SCP, completeness watcher and workers over one spool and index."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from node.config import Output, Settings
from node.dimse.scp import StorageSCP
from node.inference.request import Engine
from node.pipeline.worker import Worker, release_dead_local_workers
from node.store.index import Index
from node.store.ingest import Ingest
from node.store.spool import Spool
from node.studies.completeness import CompletenessWatcher, pacs_count_query

log = logging.getLogger(__name__)

EngineFactory = Callable[[], Engine]


class NodeService:
    def __init__(self, settings: Settings, engine_factory: EngineFactory) -> None:
        self.settings = settings
        self.engine_factory = engine_factory
        data_dir = settings.node.data_dir
        data_dir.mkdir(parents=True, exist_ok=True)
        self.spool = Spool(data_dir / "spool")
        self.index = Index(settings.node.resolved_database_url)
        self.ingest = Ingest(
            self.spool, self.index, reopen_on_late=settings.node.late_arrivals == "rerun"
        )
        self.scp = StorageSCP(settings.node, self.ingest)
        count_query = (
            pacs_count_query(settings.pacs, settings.node.ae_title) if settings.pacs else None
        )
        self.watcher = CompletenessWatcher(settings, self.index, count_query)
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.ready = threading.Event()  # set once the model is loaded and workers run
        self.failure: str | None = None

    def start(self) -> None:
        for output in self.settings.outputs:
            if output is not Output.SR:
                log.warning("output %r is not produced yet; only 'sr' is", output.value)
        self.ingest.reconcile()
        release_dead_local_workers(self.index)
        # Receive first: the PACS may route while the model is still loading.
        self.scp.start()
        self._spawn("completeness", self._watch)
        self._spawn("workers", self._run_workers)

    def _spawn(self, name: str, target: Callable[[], None]) -> None:
        thread = threading.Thread(target=target, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)

    def _watch(self) -> None:
        while not self._stop.is_set():
            try:
                self.watcher.tick()
            except Exception:
                log.exception("completeness check failed; trying again")
            self._stop.wait(0.5)

    def _run_workers(self) -> None:
        try:
            engine = self.engine_factory()
        except Exception as e:
            log.critical("the model could not be loaded, stopping the node: %s", e)
            self.failure = f"model could not be loaded: {e}"
            self._stop.set()
            return
        workers = [
            Worker(self.settings, self.index, engine, number=n)
            for n in range(self.settings.node.workers)
        ]
        for worker in workers[1:]:
            self._spawn(f"worker-{worker.id}", lambda w=worker: w.run(self._stop))  # type: ignore[misc]
        self.ready.set()
        workers[0].run(self._stop)

    def stop(self) -> None:
        self._stop.set()
        self.scp.stop()
        for thread in self._threads:
            thread.join(timeout=30)
        self.index.close()

    def wait(self) -> None:
        self._stop.wait()
