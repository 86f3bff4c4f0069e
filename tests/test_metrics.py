"""Metrics after a real node's run: counters from the receiving process, the model latency from
the worker process (multiprocess mode), studies and jobs by state read from the index."""

from __future__ import annotations

from pathlib import Path

import pytest
from prometheus_client import values
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from node import metrics
from node.config import NodeSettings
from node.metrics import metrics_dir, render_metrics
from node.store.index import Index
from tests.test_audit import Flow, node_flow


@pytest.fixture(scope="module")
def flow(tmp_path_factory: pytest.TempPathFactory, test_model: Path) -> Flow:
    return node_flow(tmp_path_factory, test_model)


def _samples(text: str) -> list[Sample]:
    return [s for family in text_string_to_metric_families(text) for s in family.samples]


def _value(samples: list[Sample], name: str, **labels: str) -> float:
    found = [s.value for s in samples if s.name == name and labels.items() <= s.labels.items()]
    assert found, f"no sample {name} {labels}"
    return sum(found)


def test_the_node_run_is_counted(flow: Flow) -> None:
    index = Index(flow.settings.node.resolved_database_url)
    try:
        body, content_type = render_metrics(index, directory=metrics_dir(flow.settings.node))
    finally:
        index.close()
    assert content_type.startswith("text/plain")
    samples = _samples(body.decode())
    assert _value(samples, "medgemma_instances_received_total", modality="CR") >= 1
    assert _value(samples, "medgemma_associations_accepted_total") >= 1
    assert _value(samples, "medgemma_associations_refused_total", reason="calling-ae") >= 1
    assert _value(samples, "medgemma_jobs", state="done") == 1
    assert _value(samples, "medgemma_jobs", state="failed") == 0
    assert _value(samples, "medgemma_studies", state="routed") == 1
    assert _value(samples, "medgemma_model_run_seconds_count", task="cxr-report") >= 1
    assert _value(samples, "medgemma_model_run_seconds_sum", task="cxr-report") > 0
    assert _value(samples, "medgemma_deliveries_total", destination="pacs") == 1
    assert _value(samples, "medgemma_deliveries_total", destination="archive") == 1
    assert _value(samples, "medgemma_delivery_failures_total", destination="archive") >= 1
    assert _value(samples, "medgemma_delivery_retries_total", destination="archive") >= 1
    assert _value(samples, "medgemma_jobs_dead_lettered_total") == 0


def test_the_model_latency_was_written_by_the_worker_process(flow: Flow) -> None:
    files = {p.name for p in metrics_dir(flow.settings.node).glob("*.db")}
    # the serving process counted the associations; another process (the worker) the model
    assert f"counter_{flow.serve_pid}.db" in files
    histograms = [name for name in files if name.startswith("histogram_")]
    assert histograms and f"histogram_{flow.serve_pid}.db" not in histograms


def test_prepare_empties_the_folder_and_render_adds_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # this process's metric state is put back afterwards
    monkeypatch.delenv(metrics.MULTIPROC_ENV, raising=False)
    monkeypatch.setattr(values, "ValueClass", values.ValueClass)
    monkeypatch.setattr(metrics, "_current", None)
    node = NodeSettings(data_dir=tmp_path, port=4242)
    folder = metrics.prepare_metrics_dir(node)
    assert folder == metrics.metrics_dir(node).resolve()
    metrics.association_refused("called-ae")
    metrics.model_run("ct-volume", 12.0)
    metrics.delivered("pacs")
    samples = _samples(metrics.render_metrics()[0].decode())
    assert _value(samples, "medgemma_associations_refused_total", reason="called-ae") == 1
    assert _value(samples, "medgemma_model_run_seconds_bucket", task="ct-volume", le="20.0") == 1
    assert _value(samples, "medgemma_model_run_seconds_bucket", task="ct-volume", le="10.0") == 0
    assert _value(samples, "medgemma_deliveries_total", destination="pacs") == 1
    # the next serve starts from nothing
    assert metrics.prepare_metrics_dir(node) == folder
    samples = _samples(metrics.render_metrics(directory=folder)[0].decode())
    assert not [s for s in samples if s.name == "medgemma_deliveries_total"]
