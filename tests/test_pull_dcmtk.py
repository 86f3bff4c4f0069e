"""Pulling a study from DCMTK's ``dcmqrscp``: a Study Root C-FIND finds it, a C-MOVE brings it
to the node's own SCP, and the node files, routes and reports on it as if it had been pushed.

Orthanc is the PACS of tests/test_pull.py; this is the same request against another
implementation of the DIMSE side, one that answers C-FIND with only what it indexes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pydicom
import requests

from fixtures.series import make_cr_study
from tests.conftest import node_config, storescu
from tests.peers import DcmQrScp, NodeProcess, free_port, wait_for


def _study(url: str, study_uid: str) -> dict[str, Any] | None:
    listed = requests.get(f"{url}/api/studies", timeout=10).json()
    return next((s for s in listed if s["study_instance_uid"] == study_uid), None)


def test_process_pulls_from_dcmqrscp_by_c_find_and_c_move(tmp_path: Path, test_model: Path) -> None:
    node_port = free_port()
    pacs = DcmQrScp(tmp_path / "dcmqrscp", {"MEDGEMMA": node_port}).start()
    try:
        cr = make_cr_study(tmp_path / "in", patient_id="PULL-DCMTK")
        sent = storescu(pacs.port, [cr], called=pacs.aet)
        assert sent.returncode == 0, sent.stderr
        study_uid = str(pydicom.dcmread(cr, stop_before_pixels=True).StudyInstanceUID)
        config_path, config = node_config(
            tmp_path,
            test_model,
            # 30 s of quiet would start nothing within this test: the pull routes the study.
            node={"port": node_port, "stable_seconds": 30},
            pacs={
                "ae_title": pacs.aet,
                "host": "127.0.0.1",
                "port": pacs.port,
                "retrieve": "c-move",
            },
            priors={"enabled": False},
            localization={"enabled": False},
        )
        url = f"http://127.0.0.1:{config['node']['http_port']}"
        node = NodeProcess(config_path, tmp_path / "node.log", node_port).start()
        try:
            answer = requests.post(f"{url}/api/studies/{study_uid}/process", timeout=120)
            assert answer.status_code == 202, answer.text + node.log()
            body = answer.json()
            assert (body["method"], body["instances"], body["new_instances"]) == ("c-move", 1, 1)
            done = wait_for(
                lambda: (
                    (study := _study(url, study_uid))
                    and [job for job in study["jobs"] if job["state"] == "done"]
                ),
                timeout=120,
                what="the study pulled from dcmqrscp to be reported on",
            )
            assert len(done) == 1 and done[0]["task"] == "cxr-report"
            # A study dcmqrscp doesn't hold.
            unknown = "1.2.826.0.1.3680043.8.498.99999"
            missing = requests.post(f"{url}/api/studies/{unknown}/process", timeout=60)
            assert missing.status_code == 404 and unknown in missing.text
        finally:
            node.stop()
    finally:
        pacs.stop()
