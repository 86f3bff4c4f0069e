"""The node's HTTP side against a real ``medgemma-node serve``: health, worklist API, the job
image, reprocess, STOW-RS input (dicomweb-client and hand-made multipart bodies), metrics."""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
import requests
from dicomweb_client.api import DICOMwebClient
from PIL import Image
from pydicom import Dataset

from fixtures.series import make_cr_study, make_ct_series
from node import __version__
from node.http.urgency import urgent_findings
from node.http.worklist import dicom_date, dicom_time, readable_name, viewer_link
from node.store.outcome import CANNOT_UNDERSTAND, DATASET_DOES_NOT_MATCH_SOP_CLASS
from node.store.spool import Spool
from tests.conftest import node_config, storescu
from tests.peers import NodeProcess, wait_for

BOUNDARY = "mgn-test-boundary"
STOW_TYPE = f'multipart/related; type="application/dicom"; boundary={BOUNDARY}'


@dataclass(frozen=True)
class Served:
    node: NodeProcess
    url: str
    dicom_port: int
    data_dir: Path
    workdir: Path


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, test_model: Path) -> Iterator[Served]:
    """One node for the module; every chest radiograph gets a "pneumothorax" box (urgent)."""
    workdir = tmp_path_factory.mktemp("http")
    config_path, config = node_config(
        workdir,
        test_model,
        node={"stable_seconds": 1},
        localization={"findings": ["pneumothorax"]},
    )
    node = NodeProcess(config_path, workdir / "node.log", config["node"]["port"]).start()
    url = f"http://127.0.0.1:{config['node']['http_port']}"
    try:
        wait_for(
            lambda: requests.get(f"{url}/healthz", timeout=5).status_code == 200,
            timeout=30,
            what="GET /healthz to answer 200",
        )
        yield Served(node, url, config["node"]["port"], Path(config["node"]["data_dir"]), workdir)
    finally:
        node.stop()


def _studies(url: str, **params: str) -> dict[str, dict[str, Any]]:
    response = requests.get(f"{url}/api/studies", params=params, timeout=10)
    response.raise_for_status()
    return {study["study_instance_uid"]: study for study in response.json()}


def _study(url: str, study_uid: str) -> dict[str, Any] | None:
    return _studies(url).get(study_uid)


def _jobs_once_finished(url: str, study_uid: str, job_id: int | None = None) -> Any:
    """The study's jobs once ``job_id`` (default: its latest job) is done or failed."""
    study = _study(url, study_uid)
    if study is None or not study["jobs"]:
        return None
    job = next((j for j in study["jobs"] if j["id"] == job_id), None) or study["jobs"][-1]
    return study["jobs"] if job["state"] in ("done", "failed") else None


def _multipart(*parts: bytes) -> bytes:
    body = b"".join(
        b"--%s\r\nContent-Type: application/dicom\r\n\r\n%s\r\n" % (BOUNDARY.encode(), part)
        for part in parts
    )
    return body + b"--%s--\r\n" % BOUNDARY.encode()


def _stow_json(response: requests.Response) -> Dataset:
    assert response.headers["content-type"].startswith("application/dicom+json")
    return Dataset.from_json(response.json())


@pytest.mark.parametrize(
    ("record", "urgent"),
    [
        ({"findings": ["pneumothorax", "opacity"]}, ["pneumothorax"]),
        ({"findings": ["opacity", "pleural effusion", "cardiomegaly"]}, []),
        ({"impression": "No pneumothorax or pulmonary edema."}, []),
        ({"impression": "Cannot exclude a small pneumothorax."}, ["pneumothorax"]),
        (
            {"report": "Large left pleural effusion. Small right effusion."},
            ["large pleural effusion"],
        ),
        ({"report": "Small effusion, large hiatal hernia."}, []),
        ({"verdicts": ["right pneumothorax: Improved", "heart size: Stable"]}, ["pneumothorax"]),
        ({"verdict": True, "findings": []}, ["acute abnormality"]),
        ({"verdict": False, "findings": []}, []),
    ],
)
def test_urgency_reads_labels_verdicts_and_text_negation_aware(
    record: dict[str, object], urgent: list[str]
) -> None:
    assert urgent_findings(record) == urgent


@pytest.mark.parametrize(
    ("person_name", "shown"),
    [
        ("Doe^Jane", "Doe, Jane"),
        ("Doe^Jane^Q^Dr^Jr", "Doe, Dr Jane Q, Jr"),
        ("Doe", "Doe"),
        ("^Jane", "Jane"),
        ("Yamada^Tarou=山田^太郎=やまだ^たろう", "Yamada, Tarou"),
        ("=山田^太郎", "山田, 太郎"),
        ("^^^^", None),
        ("", None),
        (None, None),
    ],
)
def test_person_names_read_as_a_reader_writes_them(
    person_name: str | None, shown: str | None
) -> None:
    assert readable_name(person_name) == shown


def test_dates_times_and_viewer_links_for_the_worklist() -> None:
    assert dicom_date("20240105") == "2024-01-05"
    assert dicom_date("2024.01.05") == "2024-01-05"  # ACR-NEMA style, still sent
    assert dicom_date("not a date") == "not a date"  # shown as sent, never dropped
    assert dicom_date(None) is None and dicom_date("") is None
    assert dicom_time("0930") == "09:30:00"
    assert dicom_time("093015.123456") == "09:30:15"
    assert dicom_time("99") == "99"
    assert dicom_time(None) is None
    template = "https://ohif.example/viewer?StudyInstanceUIDs={StudyInstanceUID}"
    assert viewer_link(template, "1.2.840.1") == (
        "https://ohif.example/viewer?StudyInstanceUIDs=1.2.840.1"
    )
    assert viewer_link(None, "1.2.840.1") is None


def test_healthz_reports_version_database_and_workers(served: Served) -> None:
    response = requests.get(f"{served.url}/healthz", timeout=10)
    assert response.status_code == 200
    assert response.json() == {
        "status": "ok",
        "version": __version__,
        "database_reachable": True,
        "workers_configured": 1,
        "workers_alive": 1,
        "workers_ready": response.json()["workers_ready"],  # 0 while the model loads
    }


def test_cr_by_c_store_is_listed_processed_imaged_and_reprocessed(
    served: Served, tmp_path: Path
) -> None:
    path = make_cr_study(tmp_path / "cr", accession_number="ACC-HTTP-CR")
    source = pydicom.dcmread(path, stop_before_pixels=True)
    study_uid = str(source.StudyInstanceUID)
    sent = storescu(served.dicom_port, [path])
    assert sent.returncode == 0, sent.stderr

    listed = wait_for(
        lambda: _study(served.url, study_uid), timeout=10, what="the study in /api/studies"
    )
    assert listed["accession_number"] == "ACC-HTTP-CR"
    # No token configured: the patient columns are null, said so; the study's own are there.
    assert listed["patient_hidden"] is True
    assert [listed[key] for key in ("patient_name", "patient_id", "patient_birth_date")] == [
        None,
        None,
        None,
    ]
    assert listed["study_date"] == dicom_date(str(source.StudyDate))
    assert listed["study_description"] == source.get("StudyDescription")
    assert listed["modalities"] == ["CR"]
    assert listed["viewer_url"] is None  # node.viewer_url not set
    assert listed["state"] in ("receiving", "queued", "running", "done")
    assert listed["instances"] == 1
    assert listed["series"] == [
        {
            "series_instance_uid": str(source.SeriesInstanceUID),
            "modality": "CR",
            "body_part": "CHEST",
            "instances": 1,
            "sender": "STORESCU",
        }
    ]

    (job,) = wait_for(
        lambda: _jobs_once_finished(served.url, study_uid), timeout=60, what="the CR job"
    )
    assert job["state"] == "done", served.node.log()
    assert job["task"] == "cxr-report"
    assert job["findings"] == ["pneumothorax"]
    assert job["urgent"] is True and job["urgent_findings"] == ["pneumothorax"]
    assert job["test_model"] is True and job["model"].startswith("TEST MODEL")
    assert len(job["boxes"]) == 1
    timings = job["timings"]
    assert timings["received_first"] and timings["started"] and timings["finished"]
    assert timings["seconds"] > 0
    assert timings["received_first"] <= timings["started"] <= timings["finished"]
    # The result UIDs are those of the files the job wrote (SR and GSPS).
    written = {
        str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID): p
        for p in (served.data_dir / "results" / f"job-{job['id']}").glob("*.dcm")
    }
    assert {r["sop_instance_uid"] for r in job["results"]} == set(written)
    assert sorted(r["modality"] for r in job["results"]) == ["PR", "SR"]
    assert job["image"]["sop_instance_uid"] == str(source.SOPInstanceUID)

    study = _study(served.url, study_uid)
    assert study is not None and study["urgent"] is True and study["state"] == "done"
    raw = requests.get(f"{served.url}/api/studies", timeout=10).text
    for patient_value in (str(source.PatientName), str(source.PatientID)):
        assert patient_value not in raw

    image = requests.get(served.url + job["image"]["url"], timeout=30)
    assert image.status_code == 200 and image.headers["content-type"] == "image/png"
    picture = Image.open(io.BytesIO(image.content))
    assert picture.mode == "RGB" and 0 < max(picture.size) <= 1024
    pixels = np.asarray(picture).astype(int)
    amber = np.abs(pixels - np.array([255, 200, 0])).sum(axis=2) < 60  # the box outline
    assert amber.sum() > 100
    missing = requests.get(f"{served.url}/api/jobs/999999/image.png", timeout=10)
    assert missing.status_code == 404 and "999999" in missing.json()["detail"]

    again = requests.post(f"{served.url}/api/studies/{study_uid}/reprocess", timeout=10)
    assert again.status_code == 202
    new_ids = again.json()["jobs"]
    assert len(new_ids) == 1 and new_ids[0] > job["id"]
    first, second = wait_for(
        lambda: _jobs_once_finished(served.url, study_uid, new_ids[0]),
        timeout=60,
        what="the reprocessed job",
    )
    assert (first["id"], first["state"]) == (job["id"], "superseded")
    assert (second["id"], second["state"]) == (new_ids[0], "done")


def test_worklist_state_filter_refuses_an_unknown_state_naming_it(served: Served) -> None:
    response = requests.get(f"{served.url}/api/studies", params={"state": "finished"}, timeout=10)
    assert response.status_code == 422
    detail = response.json()["detail"]
    assert "'finished'" in detail and "done" in detail and "skipped" in detail


def test_reprocess_of_an_unknown_study_is_404_naming_it(served: Served) -> None:
    response = requests.post(f"{served.url}/api/studies/1.2.3.999/reprocess", timeout=10)
    assert response.status_code == 404
    assert "1.2.3.999" in response.json()["detail"]


def test_stow_rs_ct_series_is_filed_and_processed_like_c_store(
    served: Served, tmp_path: Path
) -> None:
    files = make_ct_series(tmp_path / "ct", n_slices=8, accession_number="ACC-HTTP-CT")
    datasets = [pydicom.dcmread(p) for p in files]
    study_uid = str(datasets[0].StudyInstanceUID)
    client = DICOMwebClient(url=f"{served.url}/dicom-web")
    response = client.store_instances(datasets)

    stored = {str(item.ReferencedSOPInstanceUID) for item in response.ReferencedSOPSequence}
    assert stored == {str(ds.SOPInstanceUID) for ds in datasets}
    assert "FailedSOPSequence" not in response
    study = wait_for(lambda: _study(served.url, study_uid), timeout=10, what="the CT study")
    assert study["instances"] == 8
    assert [(s["modality"], s["sender"]) for s in study["series"]] == [("CT", "127.0.0.1")]
    # Stored as sent: the spooled files are the bytes dicomweb-client posted.
    spool = Spool(served.data_dir / "spool")
    for ds in datasets:
        posted = io.BytesIO()
        pydicom.dcmwrite(posted, ds)
        on_disk = spool.path_for(study_uid, str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID))
        assert on_disk.read_bytes() == posted.getvalue()

    (job,) = wait_for(
        lambda: _jobs_once_finished(served.url, study_uid), timeout=90, what="the CT job"
    )
    assert (job["task"], job["state"]) == ("ct-volume", "done"), served.node.log()
    assert [r["modality"] for r in job["results"]] == ["SR"]
    assert job["urgent"] is False and job["image"] is None
    assert job["volume_answer"] is False  # the test model answers "no"
    assert "STOW-RS from 127.0.0.1: 8 instance(s) stored, 0 refused" in served.node.log(None)


def test_stow_rs_reports_broken_parts_and_keeps_the_good_ones(
    served: Served, tmp_path: Path
) -> None:
    good = make_cr_study(tmp_path / "stow", accession_number="ACC-HTTP-STOW")
    header = pydicom.dcmread(good, stop_before_pixels=True)
    study_uid, sop_uid = str(header.StudyInstanceUID), str(header.SOPInstanceUID)
    url = f"{served.url}/dicom-web/studies"

    mixed = requests.post(
        url,
        data=_multipart(good.read_bytes(), b"this is not a DICOM file"),
        headers={"Content-Type": STOW_TYPE},
        timeout=30,
    )
    assert mixed.status_code == 202
    answer = _stow_json(mixed)
    assert [str(i.ReferencedSOPInstanceUID) for i in answer.ReferencedSOPSequence] == [sop_uid]
    assert [i.FailureReason for i in answer.FailedSOPSequence] == [CANNOT_UNDERSTAND]
    study = wait_for(lambda: _study(served.url, study_uid), timeout=10, what="the STOW-RS study")
    assert study["instances"] == 1 and study["accession_number"] == "ACC-HTTP-STOW"

    broken = requests.post(
        url, data=_multipart(b"\x00" * 300), headers={"Content-Type": STOW_TYPE}, timeout=30
    )
    assert broken.status_code == 409
    assert [i.FailureReason for i in _stow_json(broken).FailedSOPSequence] == [CANNOT_UNDERSTAND]

    # Into another study's URL: refused and named, nothing filed.
    elsewhere = requests.post(
        f"{url}/1.2.3.4.5",
        data=_multipart(good.read_bytes()),
        headers={"Content-Type": STOW_TYPE},
        timeout=30,
    )
    assert elsewhere.status_code == 409
    (item,) = _stow_json(elsewhere).FailedSOPSequence
    assert (str(item.ReferencedSOPInstanceUID), item.FailureReason) == (
        sop_uid,
        DATASET_DOES_NOT_MATCH_SOP_CLASS,
    )

    not_multipart = requests.post(
        url, data=good.read_bytes(), headers={"Content-Type": "application/dicom"}, timeout=30
    )
    assert not_multipart.status_code == 415


def test_metrics_count_what_the_node_did(served: Served) -> None:
    """Runs after the tests above: their instances and jobs are counted, the workers' too."""
    response = requests.get(f"{served.url}/metrics", timeout=10)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    samples = {
        line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in response.text.splitlines()
        if line and not line.startswith("#")
    }
    assert samples['medgemma_instances_received_total{modality="CR"}'] >= 2
    assert samples['medgemma_instances_received_total{modality="CT"}'] >= 8
    assert samples['medgemma_instances_refused_total{reason="unreadable"}'] >= 2
    assert samples['medgemma_jobs{state="done"}'] >= 2
    # Counted in the worker process, added up by the serving one.
    assert samples['medgemma_model_run_seconds_count{task="cxr-report"}'] >= 1
