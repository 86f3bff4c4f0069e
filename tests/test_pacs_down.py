"""A PACS that is down loses nothing: the results wait on disk and go out, once, when it is back."""

from __future__ import annotations

import time
from pathlib import Path

from dicomweb_client.api import DICOMwebClient
from pydicom import Dataset, dcmread
from pydicom.uid import (
    Comprehensive3DSRStorage,
    ComputedRadiographyImageStorage,
    GrayscaleSoftcopyPresentationStateStorage,
    SecondaryCaptureImageStorage,
)

from fixtures.series import make_cr_study
from node.config import load_settings
from node.store.index import Index
from node.store.models import JobState
from node.testing.checkpoint import LOCALIZE_LABEL
from tests.conftest import node_config, storescu
from tests.dicom_tools import dciodvfy_errors, write_tmp
from tests.peers import NodeProcess, Orthanc, wait_for

OUTAGE_SECONDS = 30


def _instances(client: DICOMwebClient, study_uid: str) -> list[Dataset]:
    found = client.search_for_instances(study_instance_uid=study_uid)
    return [Dataset.from_json(item) for item in found]


def test_results_reach_the_pacs_once_after_a_30_second_outage(
    tmp_path: Path, test_model: Path, orthanc: Orthanc
) -> None:
    cr = make_cr_study(tmp_path / "modality", patient_id="DOWN-1")
    source = dcmread(cr, stop_before_pixels=True)
    study_uid = str(source.StudyInstanceUID)
    orthanc.start()
    orthanc.upload(cr)  # the PACS holds the study the node reports on
    orthanc.stop()
    config_path, config = node_config(
        tmp_path,
        test_model,
        node={"stable_seconds": 1},
        pacs={"ae_title": orthanc.aet, "host": "127.0.0.1", "port": orthanc.dicom_port},
        localization={"findings": [LOCALIZE_LABEL]},
        outputs=["sr", "gsps", "sc"],
        delivery={"retry_seconds": 1, "max_retry_seconds": 4, "max_attempts": 100},
        routing=[
            {
                "name": "chest",
                "match": {"modality": ["CR"]},
                "task": "cxr-report",
                "save_inputs": True,
            }
        ],
    )
    node = NodeProcess(config_path, tmp_path / "node.log", config["node"]["port"]).start()
    index = Index(load_settings(config_path).node.resolved_database_url)
    client = DICOMwebClient(url=orthanc.dicomweb_url)
    try:
        assert storescu(node.port, [cr]).returncode == 0

        def failed_delivery() -> bool:
            return any("delivery failed" in (job.error or "") for job in index.jobs())

        wait_for(failed_delivery, timeout=120, what="a failed delivery to the stopped PACS")
        down_since = time.monotonic()
        job = index.jobs()[0]
        assert job.state in (JobState.QUEUED, JobState.RUNNING)
        assert job.result_paths and all(Path(p).exists() for p in job.result_paths)
        assert f"{orthanc.aet} at 127.0.0.1:{orthanc.dicom_port}" in (job.error or "")

        time.sleep(max(0.0, OUTAGE_SECONDS - (time.monotonic() - down_since)))
        orthanc.start()
        wait_for(
            lambda: len(_instances(client, study_uid)) >= 4,
            timeout=60,
            what="the SR, GSPS and SC to reach the PACS once it is back",
        )
        wait_for(lambda: index.jobs()[0].state == JobState.DONE, timeout=30, what="job done")
        time.sleep(2)  # any duplicate send would land by now
        instances = _instances(client, study_uid)
        patient_studies = client.search_for_studies(search_filters={"PatientID": "DOWN-1"})
        retrieved = [
            client.retrieve_instance(study_uid, str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID))
            for ds in instances
            if ds.SOPClassUID != ComputedRadiographyImageStorage
        ]
    finally:
        node.stop()
    # every object once, in the source study: QIDO-RS at study and patient level
    uids = [str(ds.SOPInstanceUID) for ds in instances]
    assert len(uids) == len(set(uids)) == 4
    assert sorted(str(ds.SOPClassUID) for ds in instances) == sorted(
        [
            ComputedRadiographyImageStorage,
            Comprehensive3DSRStorage,
            GrayscaleSoftcopyPresentationStateStorage,
            SecondaryCaptureImageStorage,
        ]
    )
    [patient_study] = [Dataset.from_json(item) for item in patient_studies]
    assert patient_study.StudyInstanceUID == study_uid
    assert int(patient_study.NumberOfStudyRelatedInstances) == 4
    for ds in retrieved:
        assert ds.PatientID == "DOWN-1"
        assert dciodvfy_errors(write_tmp(ds, tmp_path)) == [], ds.SOPClassUID.name
    job = index.jobs()[0]
    assert job.delivered and job.delivered_to == ["pacs"] and job.delivery_attempts >= 2
    saved = {str(dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in job.result_paths}
    assert saved == {str(ds.SOPInstanceUID) for ds in retrieved}  # the very files saved first
    # the prior search met the same stopped PACS: a single-study report, and the reason
    assert job.record is not None and job.record["comparison"] is False
    assert str(job.record["prior_note"]).startswith("no prior searched")
    # the rule asked to keep what the model saw: the report's input and the localization's
    inputs = tmp_path / "node-data" / "inputs" / f"job-{job.id}"
    assert "Describe this X-ray." in (inputs / "prompt.txt").read_text()
    assert LOCALIZE_LABEL in (inputs / "localize-1" / "prompt.txt").read_text()
    log = node.log(tail=None)
    assert "can't ask the PACS how large study" in log  # the count query fell back to the timeout
    assert log.count("answered in") == 2  # report and box, once; retries only redelivered
    index.close()
