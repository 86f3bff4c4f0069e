"""A chest CR arrives; the node finds the patient's earlier study at Orthanc, fetches it, and
the SR that goes back compares the two, citing the prior and carrying per-finding verdicts."""

from __future__ import annotations

import json
from io import BytesIO
from pathlib import Path
from typing import Any

import pytest
from pydicom import Dataset, dcmread

from fixtures.priors import make_prior_pair, make_unrelated_same_name
from node.config import load_settings
from node.store.index import Index
from node.store.models import JobState
from tests.conftest import node_config, storescu
from tests.peers import NodeProcess, Orthanc, wait_for


def _texts(ds: Dataset) -> list[str]:
    return [str(e.value) for e in ds.iterall() if e.keyword == "TextValue"]


def _sr_of_study(orthanc: Orthanc, study_uid: str) -> Dataset | None:
    found: list[str] = orthanc.post(
        "/tools/find",
        {"Level": "Instance", "Query": {"StudyInstanceUID": study_uid, "Modality": "SR"}},
    )
    if not found:
        return None
    return dcmread(BytesIO(orthanc.get_bytes(f"/instances/{found[-1]}/file")))


@pytest.mark.parametrize("transport", ["C-FIND + C-MOVE", "QIDO-RS + WADO-RS"])
def test_current_study_is_compared_with_the_prior(
    tmp_path: Path, test_model: Path, orthanc: Orthanc, transport: str
) -> None:
    dicomweb = transport.startswith("QIDO")
    config_path, config = node_config(
        tmp_path,
        test_model,
        node={"stable_seconds": 30},
        pacs={
            "ae_title": orthanc.aet,
            "host": "127.0.0.1",
            "port": orthanc.dicom_port,
            "dicomweb_url": orthanc.dicomweb_url if dicomweb else None,
        },
        routing=[
            {
                "name": "chest",
                "match": {"modality": ["CR", "DX"]},
                "task": "cxr-report",
                "save_inputs": True,
            }
        ],
    )
    port = config["node"]["port"]
    orthanc.start(node_aet="MEDGEMMA", node_port=port, route=True)
    node = NodeProcess(config_path, tmp_path / "node.log", port).start()
    index = Index(load_settings(config_path).node.resolved_database_url)
    try:
        current, prior = make_prior_pair(tmp_path / "studies", patient_id="PRIOR-E2E")
        with_reason = dcmread(current)
        with_reason.ReasonForTheRequestedProcedure = "Follow-up of pneumonia"
        with_reason.save_as(current, enforce_file_format=True)
        unrelated = make_unrelated_same_name(tmp_path / "studies", same_name_as="PRIOR-E2E")
        prior_uid = str(dcmread(prior, stop_before_pixels=True).StudyInstanceUID)
        current_uid = str(dcmread(current, stop_before_pixels=True).StudyInstanceUID)
        # The prior arrives first and gets its own report from the node.
        assert storescu(orthanc.dicom_port, [prior, unrelated], called=orthanc.aet).returncode == 0
        wait_for(lambda: _sr_of_study(orthanc, prior_uid), timeout=180, what="the prior's SR")
        assert storescu(orthanc.dicom_port, [current], called=orthanc.aet).returncode == 0
        sr = wait_for(
            lambda: _sr_of_study(orthanc, current_uid), timeout=180, what="the comparison SR"
        )
        # The SR lands at the PACS a moment before the job is marked done.
        (job,) = wait_for(
            lambda: [j for j in index.jobs(current_uid) if j.state == JobState.DONE],
            timeout=30,
            what="the comparison job to be done",
        )
        (prior_job,) = [j for j in index.jobs(prior_uid) if j.state == JobState.DONE]
    except TimeoutError:
        pytest.fail(f"timed out; node log:\n{node.log()}")
    finally:
        node.stop()
        index.close()
    # The prior itself had nothing earlier (the same-name patient's study doesn't count):
    # a single-study report, and the record says why.
    prior_record: dict[str, Any] = prior_job.record or {}
    assert prior_record["comparison"] is False
    assert prior_record["prior_note"] == "no prior study qualifies"
    assert any(prior_uid in r for r in prior_record["prior_reasons"])  # itself, rejected
    record: dict[str, Any] = job.record or {}
    assert record["prior_study"] == prior_uid  # not the same-name other patient
    assert record["comparison"] is True
    texts = _texts(sr)
    assert any("Improved" in t for t in texts)  # a per-finding verdict item
    other = sr.PertinentOtherEvidenceSequence
    assert [str(s.StudyInstanceUID) for s in other] == [prior_uid]
    # what the model saw: prior image, current image, then the text with the prior's report
    inputs = tmp_path / "node-data" / "inputs" / f"job-{job.id}"
    assert sorted(p.name for p in inputs.glob("*.png")) == ["000.png", "001.png"]
    meta = json.loads((inputs / "meta.json").read_text())
    assert meta["prior_image"] == record["prior_image"]
    # The notebook's turn exactly; the node's report on the prior goes with its own question.
    assert (inputs / "prompt.txt").read_text() == (
        "<image>\n<image>\nProvide a comparison of these two images and include details from\n"
        "the image which students should take note of when reading longitudinal CXR\n\n"
    )
    verdicts = (inputs / "verdicts" / "prompt.txt").read_text()
    assert "FINDINGS:" in verdicts and "Improved, Stable or Worsened" in verdicts
    # The clinical context goes with the node's own verdict question only, and every
    # record of the job says so: the notebook's turn had none.
    asked = 'After looking at the indication and patient history "Indication: Follow-up of '
    assert asked in verdicts
    assert meta["context"] is None
    verdict_meta = json.loads((inputs / "verdicts" / "meta.json").read_text())
    assert verdict_meta["context"].startswith("Indication: Follow-up of pneumonia.")
    assert record["context"] == verdict_meta["context"]
    assert any("Follow-up of pneumonia" in t for t in texts)
