"""The typed job record: stored as JSON, read back into its task's model (records of
earlier releases included), served by the worklist API that ``/openapi.json`` documents;
tasks and states as enums over a real SQLite index."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pydicom
import pytest
import requests
from PIL import Image
from sqlalchemy import text

from fixtures.series import make_cr_study
from node.audit import AuditLog
from node.config import Task
from node.http.app import NodeView, WorkerCounts, create_app
from node.http.server import HttpServer
from node.inference.answers import LabResult
from node.pipeline.record import (
    CxrRecord,
    JobRecord,
    LabRecord,
    VolumeRecord,
    WsiRecord,
    read_record,
)
from node.results.boxes import SourceBox
from node.store.index import Index, PlannedJob
from node.store.ingest import Ingest
from node.store.meta import InstanceMeta
from node.store.models import JobState, StudyState
from node.store.spool import Spool
from tests.peers import free_port

# A chest radiograph's record as the release before typed records stored it: no
# context_sources, verdicts or prior keys, and a key this release doesn't know.
OLD_CXR_RECORD: dict[str, object] = {
    "image": "1.2.3.4",
    "view": "PA",
    "voi": "window",
    "window": [2048.0, 4096.0],
    "context": None,
    "comparison": False,
    "notes": ["window ignored (width < 1)"],
    "findings": ["pneumothorax"],
    "boxes": [{"label": "pneumothorax", "top": 10, "left": 20, "bottom": 110, "right": 220}],
    "impression": None,
    "report": "Right pneumothorax.",
    "model": "TEST MODEL (tiny)",
    "test_model": True,
    "legacy_flag": "kept",
}


def test_a_record_of_an_earlier_release_reads_with_defaults_and_keeps_unknown_keys() -> None:
    record = read_record(Task.CXR_REPORT, OLD_CXR_RECORD, job_id=7)
    assert isinstance(record, CxrRecord)
    assert record.boxes == [SourceBox("pneumothorax", 10.0, 20.0, 110.0, 220.0)]
    assert record.window == (2048.0, 4096.0)
    assert (record.verdicts, record.context_sources, record.prior_study) == ([], [], None)
    assert record.model_extra == {"legacy_flag": "kept"}
    # Written back, every stored key keeps its value; the new keys take their defaults.
    again = record.model_dump(mode="json")
    assert {key: again[key] for key in OLD_CXR_RECORD} == {
        **OLD_CXR_RECORD,
        "boxes": [
            {"label": "pneumothorax", "top": 10.0, "left": 20.0, "bottom": 110.0, "right": 220.0}
        ],
    }
    assert read_record(Task.CXR_REPORT, None, job_id=7) == CxrRecord()


@pytest.mark.parametrize(
    ("task", "record"),
    [
        (
            Task.CXR_LONGITUDINAL,
            CxrRecord(
                image="1.2.3",
                window=(40.0, 400.0),
                comparison=True,
                verdicts=["pleural effusion: Worsened"],
                prior_study="1.2.9",
                prior_reasons=["1.2.9: same patient, 30 days before"],
                boxes=[SourceBox("pleural effusion", 1.5, 2.0, 30.0, 40.0)],
                findings=["pleural effusion"],
            ),
        ),
        (
            Task.CT_VOLUME,
            VolumeRecord(
                series="1.2.4",
                slices_sent=12,
                verdict=True,
                slice_indices=[0, 2, 4],
                geometry={"spacing_mm": 2.5, "gaps": [], "irregular": False},
                padding={"top": 0, "bottom": 0, "left": 3, "right": 4},
                region={"text": "the chest", "source": "BodyPartExamined"},
            ),
        ),
        (Task.WSI, WsiRecord(series="1.2.5", level_instances=["1.2.5.1"], magnification=10.0)),
        (
            Task.LAB_REPORT,
            LabRecord(
                pages=2,
                lab_results=[LabResult("Sodium", "140", unit="mmol/L", ignored_keys=("flag",))],
            ),
        ),
    ],
)
def test_each_tasks_record_reads_back_from_its_json_as_the_same_model(
    task: Task, record: JobRecord
) -> None:
    stored = json.loads(json.dumps(record.model_dump(mode="json")))
    assert read_record(task, stored, job_id=1) == record


def test_a_value_of_the_wrong_shape_is_left_out_naming_the_job_and_key(
    caplog: pytest.LogCaptureFixture,
) -> None:
    stored = {**OLD_CXR_RECORD, "boxes": [{"label": "x", "top": "high"}], "findings": "one"}
    with caplog.at_level(logging.WARNING, logger="node.pipeline.record"):
        record = read_record(Task.CXR_REPORT, stored, job_id=42)
    assert isinstance(record, CxrRecord)
    assert (record.boxes, record.findings) == ([], [])
    assert record.image == "1.2.3.4" and record.report == "Right pneumothorax."
    (message,) = [r.getMessage() for r in caplog.records]
    assert "job 42" in message and "boxes, findings" in message
    assert "Right pneumothorax" not in message  # values, a report's text included, stay out


def test_a_stored_record_as_a_mapping_for_callers_that_read_keys() -> None:
    record = read_record(Task.CXR_REPORT, OLD_CXR_RECORD, job_id=1)
    assert record["findings"] == ["pneumothorax"] and record["legacy_flag"] == "kept"
    with pytest.raises(KeyError):
        record["no_such_key"]


# -- over a real index and the HTTP API ------------------------------------------------------


@dataclass(frozen=True)
class Served:
    url: str
    index: Index
    source: Path  # the radiograph filed for the study
    study_uid: str


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    """The node's HTTP app in this process over a SQLite index holding one chest study."""
    index = Index(f"sqlite:///{tmp_path / 'index.sqlite'}")
    source = make_cr_study(tmp_path / "in", accession_number="ACC-RECORD")
    ds = pydicom.dcmread(source, stop_before_pixels=True)
    meta = InstanceMeta.from_dataset(
        ds, transfer_syntax_uid=str(ds.file_meta.TransferSyntaxUID), calling_ae="MOD"
    )
    index.file_instance(meta, str(source), reopen=False)
    view = NodeView(
        index,
        Ingest(Spool(tmp_path / "spool"), index, reopen_on_late=True),
        lambda: WorkerCounts(configured=1, alive=1, ready=0),
        AuditLog(tmp_path / "audit.jsonl"),
    )
    server = HttpServer(create_app(view), free_port())
    server.start()
    try:
        yield Served(f"http://127.0.0.1:{server.port}", index, source, str(ds.StudyInstanceUID))
    finally:
        server.stop()
        index.close()


def _finish(index: Index, record: dict[str, object]) -> int:
    """Claim the next queued job and finish it with ``record``, as a worker of an earlier
    release wrote it."""
    job = index.claim_job("test:1:0.0", timedelta(seconds=60))
    assert job is not None
    assert index.update_job(job.id, "test:1:0.0", record=record, state=JobState.DONE)
    return job.id


def test_jobs_and_studies_hold_enums_and_store_the_strings_they_always_did(
    served: Served,
) -> None:
    index = served.index
    (study,) = index.receiving_studies()
    assert study.state is StudyState.RECEIVING
    planned = [PlannedJob(task="cxr-report", rule="chest", series_uids=[])]
    assert index.route_study(study.id, planned, seen_last=study.last_received)
    (job,) = index.jobs(served.study_uid)
    assert (job.task, job.state) == (Task.CXR_REPORT, JobState.QUEUED)
    assert type(job.task) is Task and type(job.state) is JobState
    assert index.study(study.id).state is StudyState.ROUTED
    with index.engine.connect() as connection:
        stored = connection.execute(text("SELECT task, state FROM jobs")).one()
        study_state = connection.scalar(text("SELECT state FROM studies"))
    assert tuple(stored) == ("cxr-report", "queued") and study_state == "routed"


def test_the_worklist_serves_a_record_of_an_earlier_release(served: Served) -> None:
    index = served.index
    (study,) = index.receiving_studies()
    ds = pydicom.dcmread(served.source, stop_before_pixels=True)
    planned = [
        PlannedJob(task="cxr-report", rule="chest", series_uids=[str(ds.SeriesInstanceUID)]),
        PlannedJob(task="ct-volume", rule="ct", series_uids=[]),
    ]
    assert index.route_study(study.id, planned, seen_last=study.last_received)
    old = {**OLD_CXR_RECORD, "image": str(ds.SOPInstanceUID)}
    cxr_id = _finish(index, old)
    volume_id = _finish(index, {"series": "1.2.9", "verdict": True, "findings": []})

    response = requests.get(f"{served.url}/api/studies", params={"state": "done"}, timeout=10)
    response.raise_for_status()
    (listed,) = response.json()
    assert listed["state"] == "done" and listed["accession_number"] == "ACC-RECORD"
    jobs: dict[int, dict[str, Any]] = {job["id"]: job for job in listed["jobs"]}
    cxr, volume = jobs[cxr_id], jobs[volume_id]
    assert cxr["task"] == "cxr-report" and cxr["state"] == "done"
    assert cxr["boxes"] == [
        {"label": "pneumothorax", "top": 10.0, "left": 20.0, "bottom": 110.0, "right": 220.0}
    ]
    assert cxr["impression"] == "Right pneumothorax."  # no IMPRESSION: the report
    assert cxr["urgent_findings"] == ["pneumothorax"] and cxr["verdicts"] == []
    assert cxr["model"] == "TEST MODEL (tiny)" and cxr["test_model"] is True
    assert cxr["image"] == {
        "sop_instance_uid": str(ds.SOPInstanceUID),
        "url": f"/api/jobs/{cxr_id}/image.png",
    }
    assert volume["volume_answer"] is True and volume["urgent_findings"] == ["acute abnormality"]
    assert volume["boxes"] == [] and volume["image"] is None and volume["model"] is None
    assert listed["urgent_findings"] == ["pneumothorax", "acute abnormality"]
    assert listed["image_url"] == cxr["image"]["url"]
    none = requests.get(f"{served.url}/api/studies", params={"state": "skipped"}, timeout=10)
    assert none.status_code == 200 and none.json() == []

    # The picture is drawn from the same record: its box, on the radiograph filed.
    picture = requests.get(f"{served.url}{cxr['image']['url']}", timeout=60)
    assert picture.status_code == 200 and picture.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(picture.content)).format == "PNG"
    no_image = requests.get(f"{served.url}/api/jobs/{volume_id}/image.png", timeout=10)
    assert no_image.status_code == 404
    assert f"job {volume_id} (ct-volume, done) records no radiograph" in no_image.json()["detail"]


def _schema(document: dict[str, Any], reference: dict[str, Any]) -> dict[str, Any]:
    name = reference["$ref"].rsplit("/", 1)[-1]
    schema: dict[str, Any] = document["components"]["schemas"][name]
    return schema


def test_openapi_json_documents_the_answers_of_the_json_routes(served: Served) -> None:
    response = requests.get(f"{served.url}/openapi.json", timeout=10)
    response.raise_for_status()
    document = response.json()
    paths = document["paths"]

    def answer(path: str, method: str, status: str) -> dict[str, Any]:
        content: dict[str, Any] = paths[path][method]["responses"][status]["content"]
        return content["application/json"]["schema"]

    studies = answer("/api/studies", "get", "200")
    assert studies["type"] == "array"
    study = _schema(document, studies["items"])
    assert {"study_instance_uid", "patient_hidden", "urgent_findings", "jobs"} <= set(
        study["required"]
    )
    job = _schema(document, study["properties"]["jobs"]["items"])
    assert _schema(document, job["properties"]["task"])["enum"] == [t.value for t in Task]
    assert _schema(document, job["properties"]["state"])["enum"] == [s.value for s in JobState]
    assert _schema(document, job["properties"]["boxes"]["items"])["required"] == [
        "label",
        "top",
        "left",
        "bottom",
        "right",
    ]
    (state_parameter,) = [
        p for p in paths["/api/studies"]["get"]["parameters"] if p["name"] == "state"
    ]
    assert "done" in state_parameter["schema"]["enum"]
    assert "receiving" in state_parameter["schema"]["enum"]

    health = _schema(document, answer("/healthz", "get", "200"))
    assert _schema(document, answer("/healthz", "get", "503")) == health
    assert health["properties"]["status"]["enum"] == ["ok", "unavailable"]
    reprocess = _schema(document, answer("/api/studies/{study_uid}/reprocess", "post", "202"))
    assert set(reprocess["required"]) == {"study_instance_uid", "jobs"}
    pulled = _schema(document, answer("/api/studies/{study_uid}/process", "post", "202"))
    assert pulled["properties"]["method"]["enum"] == ["wado", "c-get", "c-move"]


def test_healthz_answers_as_documented(served: Served) -> None:
    response = requests.get(f"{served.url}/healthz", timeout=10)
    assert response.status_code == 200
    assert response.json() == {
        "status": "ok",
        "version": response.json()["version"],
        "database_reachable": True,
        "workers_configured": 1,
        "workers_alive": 1,
        "workers_ready": 0,
    }
