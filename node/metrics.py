"""Prometheus metrics: counters and the model latency histogram, across the node's processes.

The model runs in worker processes, so the counters use prometheus_client's multiprocess
mode: each process writes its values to its own files under ``data_dir/metrics/<host>-<port>``
(one folder per node, so nodes sharing a ``data_dir`` keep theirs apart), and
``render_metrics`` adds them up. Study and job counts by state are not counted here but
read from the index at scrape time, so they are right whichever process or node changed
them.

Recording a metric never raises: a failure is logged once and the work goes on.
"""

from __future__ import annotations

import functools
import logging
import os
import re
import socket
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, ParamSpec

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    values,
)
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector
from sqlalchemy import func, select

from node.config import NodeSettings
from node.store.models import Job, JobState, Study, StudyState

if TYPE_CHECKING:
    from sqlalchemy.orm import InstrumentedAttribute

    from node.store.index import Index

log = logging.getLogger(__name__)

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

# Seconds per job's task: a test-model radiograph on a CPU takes ~1 s, a real CT volume
# with 2000 new tokens minutes.
MODEL_SECONDS_BUCKETS = (0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600, 1200, 1800)

# Label values a sender controls are kept to a small set.
_MODALITY = re.compile(r"^[A-Z0-9_]{1,16}$")


class _Metrics:
    """The metric objects of this process, made after the value class is chosen."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.instances_received = Counter(
            "medgemma_instances_received",
            "Instances filed (received and durable), by Modality",
            ["modality"],
            registry=r,
        )
        self.instances_refused = Counter(
            "medgemma_instances_refused",
            "C-STORE requests answered with a failure status, by reason",
            ["reason"],
            registry=r,
        )
        self.associations_accepted = Counter(
            "medgemma_associations_accepted", "DICOM associations accepted", registry=r
        )
        self.associations_refused = Counter(
            "medgemma_associations_refused",
            "DICOM associations refused, by reason (called-ae, calling-ae)",
            ["reason"],
            registry=r,
        )
        self.model_seconds = Histogram(
            "medgemma_model_run_seconds",
            "Seconds a job's task took (images, any prior retrieval, model calls), by task",
            ["task"],
            buckets=MODEL_SECONDS_BUCKETS,
            registry=r,
        )
        self.model_errors = Counter(
            "medgemma_model_errors",
            "Job task runs that ended in an error, by task",
            ["task"],
            registry=r,
        )
        self.deliveries = Counter(
            "medgemma_deliveries",
            "Jobs' results delivered, by destination",
            ["destination"],
            registry=r,
        )
        self.delivery_failures = Counter(
            "medgemma_delivery_failures",
            "Failed deliveries of a job's results, by destination",
            ["destination"],
            registry=r,
        )
        self.delivery_retries = Counter(
            "medgemma_delivery_retries",
            "Deliveries tried again after an earlier failure, by destination",
            ["destination"],
            registry=r,
        )
        self.dead_lettered = Counter(
            "medgemma_jobs_dead_lettered",
            "Jobs dead-lettered (state undelivered) after delivery.max_attempts",
            registry=r,
        )


_lock = threading.Lock()
_current: _Metrics | None = None
_failed = False


def _metrics() -> _Metrics:
    global _current
    with _lock:
        if _current is None:
            _current = _Metrics()
        return _current


P = ParamSpec("P")


def _never_raises(record: Callable[P, None]) -> Callable[P, None]:
    @functools.wraps(record)
    def safe(*args: P.args, **kwargs: P.kwargs) -> None:
        global _failed
        try:
            record(*args, **kwargs)
        except Exception:
            if not _failed:  # a full disk would otherwise log once per instance
                _failed = True
                log.exception(
                    "metric %s not recorded (further failures not logged)", record.__name__
                )

    return safe


def metrics_dir(node: NodeSettings) -> Path:
    """This node's folder of per-process metric files."""
    return node.data_dir / "metrics" / f"{socket.gethostname()}-{node.port}"


def prepare_metrics_dir(node: NodeSettings) -> Path:
    """Empty this node's metrics folder and turn on multiprocess mode for it.

    Call once in the serving process before any worker process is started: the workers
    inherit the environment variable and write their values there.
    """
    global _current
    directory = metrics_dir(node).resolve()
    directory.mkdir(parents=True, exist_ok=True)
    for stale in directory.glob("*.db"):
        stale.unlink()
    os.environ[MULTIPROC_ENV] = str(directory)
    with _lock:
        # prometheus_client picks its value class when first imported, which may have been
        # before this ran: pick again, and make this process's metrics anew with it.
        values.ValueClass = values.get_value_class()
        _current = None
    return directory


def _modality(modality: str | None) -> str:
    value = (modality or "").strip().upper()
    if not value:
        return "unknown"
    return value if _MODALITY.match(value) else "other"


@_never_raises
def instance_received(modality: str | None) -> None:
    _metrics().instances_received.labels(_modality(modality)).inc()


@_never_raises
def instance_refused(reason: str) -> None:
    _metrics().instances_refused.labels(reason).inc()


@_never_raises
def association_accepted() -> None:
    _metrics().associations_accepted.inc()


@_never_raises
def association_refused(reason: str) -> None:
    _metrics().associations_refused.labels(reason).inc()


@_never_raises
def model_run(task: str, seconds: float) -> None:
    _metrics().model_seconds.labels(task).observe(seconds)


@_never_raises
def model_error(task: str) -> None:
    _metrics().model_errors.labels(task).inc()


@_never_raises
def delivered(destination: str) -> None:
    _metrics().deliveries.labels(destination).inc()


@_never_raises
def delivery_failed(destination: str) -> None:
    _metrics().delivery_failures.labels(destination).inc()


@_never_raises
def delivery_retried(destination: str) -> None:
    _metrics().delivery_retries.labels(destination).inc()


@_never_raises
def dead_lettered() -> None:
    _metrics().dead_lettered.inc()


class IndexCollector(Collector):
    """Studies and jobs by state, counted in the index at scrape time."""

    def __init__(self, index: Index) -> None:
        self.index = index

    def _count(self, state: InstrumentedAttribute[str]) -> dict[str, int]:
        with self.index.session() as session:
            rows = session.execute(select(state, func.count()).group_by(state)).all()
        return {str(value): int(count) for value, count in rows}

    def collect(self) -> Iterable[Metric]:
        try:
            studies = self._count(Study.state)
            jobs = self._count(Job.state)
        except Exception:
            log.exception("metrics: the index could not be counted; study and job gauges left out")
            return
        for name, doc, counts, states in (
            ("medgemma_studies", "Studies in the index, by state", studies, list(StudyState)),
            ("medgemma_jobs", "Jobs in the index, by state", jobs, list(JobState)),
        ):
            gauge = GaugeMetricFamily(name, doc, labels=["state"])
            for state in [*states, *sorted(set(counts) - set(states))]:
                gauge.add_metric([str(state)], counts.get(str(state), 0))
            yield gauge


class _ThisProcess(Collector):
    """The metric objects of this process, when multiprocess mode is off."""

    def collect(self) -> Iterable[Metric]:
        return _metrics().registry.collect()


def render_metrics(
    index: Index | None = None, *, directory: Path | None = None
) -> tuple[bytes, str]:
    """The Prometheus text exposition and its content type, for ``GET /metrics``.

    Counters come from every process's files in ``directory`` (default: the folder
    ``prepare_metrics_dir`` set up), or from this process alone when there is none;
    study and job gauges from ``index`` when given.
    """
    registry = CollectorRegistry()
    folder = directory if directory is not None else os.environ.get(MULTIPROC_ENV)
    if folder:
        MultiProcessCollector(registry, path=str(folder))
    else:
        registry.register(_ThisProcess())
    if index is not None:
        registry.register(IndexCollector(index))
    return generate_latest(registry), CONTENT_TYPE_LATEST
