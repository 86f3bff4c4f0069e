"""The audit trail of a real node: who connected, what arrived, what the model did, where the
results went; one JSON object per line, in time order, with no patient names or IDs.

``node_flow`` runs the node once per test session (tests/test_metrics.py reads the same run):
a refused AE, a chest CR from an allowed modality, the model, delivery by C-STORE to the
PACS and by STOW-RS to an archive that is down at first.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread

from fixtures.series import make_cr_study
from node.audit import AuditEvent
from node.config import NodeSettings, Settings, load_settings
from node.dimse.scp import StorageSCP
from node.store.index import Index
from node.store.ingest import Ingest
from node.store.models import JobState
from node.store.spool import Spool
from tests.conftest import echoscu, instance_meta, node_config, storescu
from tests.peers import NODE_BIN, REPO, NodeProcess, Orthanc, free_port, wait_for

# Distinctive, so any trace of it in a log is found. make_cr_study names the patient
# MGN^<id>.
PATIENT_ID = "PHI-AUDIT-7731"
PATIENT_NAME = f"MGN^{PATIENT_ID}"


class VerboseNode(NodeProcess):
    """``medgemma-node --verbose serve``: library debug output too, where patient data leaks."""

    def start(self) -> VerboseNode:
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [str(NODE_BIN), "--verbose", "serve", "--config", str(self.config_path)],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=REPO,
        )
        wait_for(self._listening, timeout=60, what=f"the node to listen on port {self.port}")
        return self


@dataclass(frozen=True)
class Flow:
    settings: Settings
    serve_pid: int
    study_uid: str
    audit_text: str
    node_log: str
    pacs_sop_uids: list[str]  # what the PACS holds in the study besides the CR

    @property
    def events(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.audit_text.splitlines()]

    def of(self, event: AuditEvent) -> list[dict[str, Any]]:
        return [e for e in self.events if e["event"] == event.value]


def _audit_events(path: Path, event: AuditEvent) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    lines = path.read_text().splitlines()
    return [e for e in map(json.loads, lines) if e["event"] == event.value]


def _study_sop_uids(pacs: Orthanc, study_uid: str) -> list[str]:
    found = pacs.get(f"/dicom-web/studies/{study_uid}/instances")
    return sorted(str(item["00080018"]["Value"][0]) for item in found)


def _run_flow(work: Path, test_model: Path) -> Flow:
    pacs = Orthanc(work / "pacs").start()
    archive = Orthanc(work / "archive", aet="ARCHIVE")  # down until the first failure
    config_path, config = node_config(
        work,
        test_model,
        node={
            "stable_seconds": 1,
            "allowed_peers": [{"ae_title": "MODALITY", "host": "127.0.0.1"}],
        },
        pacs={"ae_title": pacs.aet, "host": "127.0.0.1", "port": pacs.dicom_port},
        delivery={
            "retry_seconds": 0.5,
            "destinations": [
                {"name": "archive", "dicomweb_url": archive.dicomweb_url, "timeout_seconds": 5}
            ],
        },
    )
    settings = load_settings(config_path)
    audit_path = settings.node.resolved_audit_log
    assert audit_path is not None
    cr = make_cr_study(work / "modality", patient_id=PATIENT_ID)
    study_uid = str(dcmread(cr, stop_before_pixels=True).StudyInstanceUID)
    node = VerboseNode(config_path, work / "node.log", config["node"]["port"]).start()
    assert node.process is not None
    serve_pid = node.process.pid
    index = Index(settings.node.resolved_database_url)
    try:
        assert echoscu(node.port, aet="INTRUDER").returncode != 0
        sent = storescu(node.port, [cr], aet="MODALITY")
        assert sent.returncode == 0, sent.stdout + sent.stderr
        wait_for(
            lambda: _audit_events(audit_path, AuditEvent.DELIVERY_FAILED),
            timeout=120,
            what="a failed delivery to the archive",
        )
        archive.start()
        wait_for(
            lambda: [j for j in index.jobs() if j.state == JobState.DONE],
            timeout=60,
            what="the job to be done",
        )
        pacs_sop_uids = [
            uid
            for uid in _study_sop_uids(pacs, study_uid)
            if uid != str(dcmread(cr, stop_before_pixels=True).SOPInstanceUID)
        ]
    finally:
        node.stop()
        pacs.stop()
        archive.stop()
        index.close()
    return Flow(
        settings=settings,
        serve_pid=serve_pid,
        study_uid=study_uid,
        audit_text=audit_path.read_text(),
        node_log=node.log(tail=None),
        pacs_sop_uids=pacs_sop_uids,
    )


_FLOW: list[Flow] = []


def node_flow(tmp_path_factory: pytest.TempPathFactory, test_model: Path) -> Flow:
    """The node run both audit and metrics tests read; run once per session."""
    if not _FLOW:
        _FLOW.append(_run_flow(tmp_path_factory.mktemp("audit-flow"), test_model))
    return _FLOW[0]


@pytest.fixture(scope="module")
def flow(tmp_path_factory: pytest.TempPathFactory, test_model: Path) -> Flow:
    return node_flow(tmp_path_factory, test_model)


def test_every_line_is_json_in_time_order(flow: Flow) -> None:
    events = flow.events
    assert events and all({"time", "event"} <= set(e) for e in events)
    times = [datetime.fromisoformat(e["time"]) for e in events]
    assert all(t.utcoffset() == timedelta(0) for t in times)
    assert times == sorted(times)
    assert flow.audit_text.endswith("\n")


def test_associations_accepted_and_refused_with_peer_address(flow: Flow) -> None:
    [refused] = flow.of(AuditEvent.ASSOCIATION_REFUSED)
    assert refused["calling_ae"] == "INTRUDER" and refused["called_ae"] == "MEDGEMMA"
    assert refused["peer_address"] == "127.0.0.1" and isinstance(refused["peer_port"], int)
    assert "node.allowed_peers" in refused["reason"]
    [accepted] = flow.of(AuditEvent.ASSOCIATION_ACCEPTED)
    assert accepted["calling_ae"] == "MODALITY" and accepted["called_ae"] == "MEDGEMMA"
    assert accepted["peer_address"] == "127.0.0.1" and accepted["peer_port"] > 0


def test_study_received_per_association(flow: Flow) -> None:
    [received] = flow.of(AuditEvent.STUDY_RECEIVED)
    assert received["study_uid"] == flow.study_uid
    assert received["instances"] == 1 and received["prior"] is False
    assert received["calling_ae"] == "MODALITY" and received["peer_address"] == "127.0.0.1"
    assert "patient_id" not in received  # node.log_phi is false


def test_model_run_and_results_sent(flow: Flow) -> None:
    [run] = flow.of(AuditEvent.MODEL_RUN)
    assert run["task"] == "cxr-report" and run["study_uid"] == flow.study_uid
    assert run["outcome"] == "ok" and run["error"] is None
    assert run["test_model"] is True and "TEST MODEL" in run["model"].upper()
    assert run["seconds"] > 0 and run["attempt"] == 1
    sent = {e["destination"]: e for e in flow.of(AuditEvent.RESULTS_SENT)}
    assert set(sent) == {"pacs", "archive"}
    assert sent["pacs"]["protocol"] == "C-STORE" and sent["archive"]["protocol"] == "STOW-RS"
    assert all(e["job_id"] == run["job_id"] for e in sent.values())
    # the UIDs the PACS holds are the ones audited, and the archive got the same objects
    assert sorted(sent["pacs"]["sop_instance_uids"]) == flow.pacs_sop_uids
    assert sent["archive"]["sop_instance_uids"] == sent["pacs"]["sop_instance_uids"]
    failed = flow.of(AuditEvent.DELIVERY_FAILED)
    assert failed and all(e["destination"] == "archive" for e in failed)
    assert failed[0]["delivery_attempt"] == 1 and "archive" in failed[0]["error"]
    assert not flow.of(AuditEvent.DEAD_LETTERED)


def test_no_patient_name_or_id_in_the_audit_or_the_node_log(flow: Flow) -> None:
    # the priors C-FIND by PatientID ran, and pynetdicom's verbose output did not dump it
    assert "study(ies) for the patient of study" in flow.node_log
    for text in (flow.audit_text, flow.node_log):
        assert PATIENT_ID not in text
        assert PATIENT_NAME not in text
    assert flow.study_uid in flow.node_log  # the log names the study by its UID


def _scp(data_dir: Path, **node: Any) -> StorageSCP:
    settings = NodeSettings(ae_title="MEDGEMMA", port=free_port(), data_dir=data_dir, **node)
    index = Index(settings.resolved_database_url)
    return StorageSCP(settings, Ingest(Spool(data_dir / "spool"), index, reopen_on_late=True))


def test_log_phi_adds_the_patient_id_and_null_disables(tmp_path: Path) -> None:
    cr = make_cr_study(tmp_path / "modality", patient_id=PATIENT_ID)
    with_phi = _scp(tmp_path / "phi", log_phi=True)
    disabled = _scp(tmp_path / "off", audit_log=None)
    for scp in (with_phi, disabled):
        scp.start("127.0.0.1")
    try:
        for scp in (with_phi, disabled):
            assert storescu(scp.settings.port, [cr]).returncode == 0
        audit_path = tmp_path / "phi" / "audit.jsonl"
        [received] = wait_for(
            lambda: _audit_events(audit_path, AuditEvent.STUDY_RECEIVED),
            timeout=10,
            what="the study-received event",
        )
    finally:
        for scp in (with_phi, disabled):
            scp.stop()
            scp.ingest.index.close()
    assert received["patient_id"] == PATIENT_ID
    assert disabled.settings.resolved_audit_log is None
    assert not list((tmp_path / "off").glob("*.jsonl"))


def test_retry_and_reprocess_from_the_command_line_are_audited(tmp_path: Path) -> None:
    config_path, config = node_config(tmp_path, tmp_path / "model-unused")
    settings = load_settings(config_path)
    settings.node.data_dir.mkdir(parents=True)
    index = Index(settings.node.resolved_database_url)
    study_uid = "1.2.826.0.1.3680043.8.498.77"
    index.file_instance(instance_meta(study_uid, 1), str(tmp_path / "x.dcm"), reopen=True)
    index.close()
    for args in (["retry", "7"], ["reprocess", study_uid]):
        subprocess.run(
            [str(NODE_BIN), *args, "--config", str(config_path)],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    audit_path = settings.node.resolved_audit_log
    assert audit_path is not None
    [retry] = _audit_events(audit_path, AuditEvent.RETRY_REQUESTED)
    assert retry["asked"] == [7] and retry["job_ids"] == [] and retry["user"]
    [reprocess] = _audit_events(audit_path, AuditEvent.REPROCESS_REQUESTED)
    assert reprocess["study_uid"] == study_uid and reprocess["user"] == retry["user"]


# A writer process: only the audit module, so four start in well under a second.
APPEND = """
import sys
from pathlib import Path
from node.audit import AuditEvent, AuditLog
audit = AuditLog(Path(sys.argv[1]))
for number in range(int(sys.argv[3])):
    # longer than PIPE_BUF and a page: a line split by another writer would show
    audit.record(AuditEvent.RESULTS_SENT, writer=int(sys.argv[2]), number=number, pad="x" * 9000)
"""


def test_processes_appending_at_once_never_interleave_lines(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    writers = [
        subprocess.Popen([sys.executable, "-c", APPEND, str(path), str(writer), "300"], cwd=REPO)
        for writer in range(4)
    ]
    assert [process.wait(timeout=120) for process in writers] == [0, 0, 0, 0]
    events = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(events) == 1200
    for writer in range(4):
        assert [e["number"] for e in events if e["writer"] == writer] == list(range(300))
    times = [datetime.fromisoformat(e["time"]) for e in events]
    assert times == sorted(times)
