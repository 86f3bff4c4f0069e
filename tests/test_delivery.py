"""Delivery to several destinations: STOW-RS and C-STORE, a dead letter that `retry` sends on,
and `reprocess`, whose new report names the one it replaces. All against real Orthancs."""

from __future__ import annotations

import subprocess
from pathlib import Path

from dicomweb_client.api import DICOMwebClient
from pydicom import Dataset, dcmread

from fixtures.series import make_cr_study
from node.config import load_settings
from node.store.index import Index
from node.store.models import JobState
from tests.conftest import node_config, storescu
from tests.peers import NODE_BIN, NodeProcess, Orthanc, wait_for


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(NODE_BIN), *args], capture_output=True, text=True, timeout=120, check=False
    )


def _sop_uids(client: DICOMwebClient, study_uid: str, modality: str) -> list[str]:
    found = client.search_for_instances(
        study_instance_uid=study_uid, search_filters={"Modality": modality}
    )
    return [str(Dataset.from_json(item).SOPInstanceUID) for item in found]


def test_dead_letter_is_retried_by_hand_and_reprocessing_supersedes(
    tmp_path: Path, test_model: Path, orthanc: Orthanc
) -> None:
    archive = Orthanc(tmp_path / "archive", aet="ARCHIVE")  # down until the retry
    orthanc.start()
    config_path, config = node_config(
        tmp_path,
        test_model,
        node={"stable_seconds": 1},
        pacs={"ae_title": orthanc.aet, "host": "127.0.0.1", "port": orthanc.dicom_port},
        outputs=["sr"],
        delivery={
            "retry_seconds": 0.5,
            "max_attempts": 2,
            "destinations": [
                {"name": "archive", "dicomweb_url": archive.dicomweb_url, "timeout_seconds": 5}
            ],
        },
    )
    settings = load_settings(config_path)
    node = NodeProcess(config_path, tmp_path / "node.log", config["node"]["port"]).start()
    index = Index(settings.node.resolved_database_url)
    pacs = DICOMwebClient(url=orthanc.dicomweb_url)
    try:
        cr = make_cr_study(tmp_path / "modality", patient_id="DEAD-1")
        study_uid = str(dcmread(cr, stop_before_pixels=True).StudyInstanceUID)
        assert storescu(node.port, [cr]).returncode == 0
        wait_for(
            lambda: [j for j in index.jobs() if j.state == JobState.UNDELIVERED],
            timeout=120,
            what="the job to be dead-lettered",
        )
        job = index.jobs()[0]
        # the PACS took the report; only the archive is missing it
        assert job.delivered_to == ["pacs"] and not job.delivered
        assert job.delivery_attempts == 2
        assert "archive: STOW-RS to " in (job.error or "") and "dead-lettered" in (job.error or "")
        [first_sr] = _sop_uids(pacs, study_uid, "SR")
        listed = _cli("jobs", "--config", str(config_path), "--state", "undelivered")
        assert listed.returncode == 0 and f"{job.id}\tundelivered\tcxr-report" in listed.stdout

        archive.start()
        retried = _cli("retry", "--config", str(config_path))
        assert retried.returncode == 0, retried.stderr
        assert f"re-queued 1 job(s): {job.id}" in retried.stdout
        wait_for(lambda: index.job(job.id).state == JobState.DONE, timeout=60, what="retry done")
        assert index.job(job.id).delivered_to == ["pacs", "archive"]
        archived = _sop_uids(DICOMwebClient(url=archive.dicomweb_url), study_uid, "SR")
        assert archived == [first_sr]  # the same object, not a new run
        assert _sop_uids(pacs, study_uid, "SR") == [first_sr]  # not sent to the PACS again

        unknown = _cli("retry", "--config", str(config_path), "999")
        assert unknown.returncode == 1 and "999" in unknown.stderr

        again = _cli("reprocess", "--config", str(config_path), study_uid)
        assert again.returncode == 0, again.stderr
        wait_for(
            lambda: len(_sop_uids(pacs, study_uid, "SR")) == 2,
            timeout=120,
            what="the reprocessed report in the PACS",
        )
        missing = _cli("reprocess", "--config", str(config_path), "1.2.3.4")
        assert missing.returncode == 1 and "1.2.3.4 is not in the index" in missing.stderr
    finally:
        node.stop()
        archive.stop()
    [new_sr_uid] = set(_sop_uids(pacs, study_uid, "SR")) - {first_sr}
    jobs = index.jobs()
    assert [j.state for j in jobs] == [JobState.SUPERSEDED, JobState.DONE]
    new_sr = dcmread(jobs[1].result_paths[0])  # type: ignore[index]
    assert new_sr.SOPInstanceUID == new_sr_uid
    [predecessor] = (
        new_sr.PredecessorDocumentsSequence[0].ReferencedSeriesSequence[0].ReferencedSOPSequence
    )
    assert predecessor.ReferencedSOPInstanceUID == first_sr
    index.close()
