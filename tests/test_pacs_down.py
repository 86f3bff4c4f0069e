"""A PACS that is down loses nothing: the result waits on disk and goes out when it is back."""

from __future__ import annotations

from pathlib import Path

from pydicom import dcmread

from fixtures.series import make_cr_study
from node.config import load_settings
from node.store.index import Index
from node.store.models import JobState
from tests.conftest import node_config, storescu
from tests.peers import NodeProcess, Orthanc, wait_for


def test_result_is_delivered_when_the_pacs_comes_back(
    tmp_path: Path, test_model: Path, orthanc: Orthanc
) -> None:
    config_path, config = node_config(
        tmp_path,
        test_model,
        node={"stable_seconds": 1, "retry_seconds": 1, "max_attempts": 50},
        pacs={"ae_title": orthanc.aet, "host": "127.0.0.1", "port": orthanc.dicom_port},
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
    try:
        cr = make_cr_study(tmp_path / "modality", patient_id="DOWN-1")
        study_uid = str(dcmread(cr, stop_before_pixels=True).StudyInstanceUID)
        assert storescu(node.port, [cr]).returncode == 0

        def failed_delivery() -> bool:
            return any("delivery failed" in (job.error or "") for job in index.jobs())

        wait_for(failed_delivery, timeout=120, what="a failed delivery to the stopped PACS")
        job = index.jobs()[0]
        assert job.state in (JobState.QUEUED, JobState.RUNNING)
        assert job.result_paths and Path(job.result_paths[0]).exists()
        assert f"{orthanc.aet} at 127.0.0.1:{orthanc.dicom_port}" in (job.error or "")

        orthanc.start()

        def sr_in_pacs() -> bool:
            found = orthanc.post(
                "/tools/find",
                {"Level": "Series", "Query": {"StudyInstanceUID": study_uid, "Modality": "SR"}},
            )
            return bool(found)

        wait_for(sr_in_pacs, timeout=120, what="the SR to reach the PACS once it is back")
        wait_for(lambda: index.jobs()[0].state == JobState.DONE, timeout=30, what="job done")
    finally:
        node.stop()
    job = index.jobs()[0]
    assert job.delivered and job.attempts >= 2
    # the prior search met the same stopped PACS: a single-study report, and the reason
    assert job.record is not None and job.record["comparison"] is False
    assert str(job.record["prior_note"]).startswith("no prior searched")
    # the rule asked to keep what the model saw
    inputs = tmp_path / "node-data" / "inputs" / f"job-{job.id}"
    assert (inputs / "000.png").exists() and "Describe this X-ray." in (
        inputs / "prompt.txt"
    ).read_text()
    log = node.log(tail=None)
    assert "can't ask the PACS how large study" in log  # the count query fell back to the timeout
    assert log.count("answered in") == 1  # the model ran once; retries only redelivered
    index.close()
