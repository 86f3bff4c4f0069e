"""The SCP against real DCMTK tools and a real pynetdicom SCU: what is acknowledged is on disk."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom import Dataset, dcmread
from pydicom.data import get_testdata_file
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE, _config
from pynetdicom.sop_class import CTImageStorage, SecondaryCaptureImageStorage  # type: ignore
from pynetdicom.status import code_to_category

from node.config import NodeSettings, Peer
from node.dimse.scp import StorageSCP
from node.store.index import Index
from node.store.ingest import Ingest
from node.store.models import Instance, Study
from node.store.outcome import CANNOT_UNDERSTAND, DATASET_DOES_NOT_MATCH_SOP_CLASS
from node.store.spool import Spool
from tests.conftest import echoscu, storescu
from tests.peers import free_port

# Each file with the storescu option that proposes its own transfer syntax, so DCMTK sends
# it as it is instead of converting it.
ENCODINGS = {
    "MR_small.dcm": "-xe",  # explicit VR little endian
    "MR_small_implicit.dcm": "-xi",
    "MR_small_bigendian.dcm": "-xb",
    "MR_small_RLE.dcm": "-xr",
    "MR_small_jp2klossless.dcm": "-xv",
    "MR_small_jpeg_ls_lossless.dcm": "-xt",
    "JPEG-lossy.dcm": "-xx",  # JPEG extended
    "JPEG-LL.dcm": "-xs",  # JPEG lossless
    "SC_rgb_jpeg_dcmtk.dcm": "-xy",  # JPEG baseline
    "JPEG2000.dcm": "-xw",
    "image_dfl.dcm": "-xd",  # deflate
}


class Scp:
    def __init__(self, tmp_path: Path, peers: list[Peer]) -> None:
        self.settings = NodeSettings(
            ae_title="MEDGEMMA", port=free_port(), data_dir=tmp_path, allowed_peers=peers
        )
        self.index = Index(self.settings.resolved_database_url)
        self.spool = Spool(tmp_path / "spool")
        self.scp = StorageSCP(self.settings, Ingest(self.spool, self.index, reopen_on_late=True))

    def sop_uids(self) -> set[str]:
        return self.index.known_sop_uids()

    def instance(self, sop_uid: str) -> Instance:
        with self.index.session() as s:
            return s.query(Instance).filter_by(sop_uid=sop_uid).one()


@pytest.fixture
def scp(tmp_path: Path) -> Iterator[Scp]:
    node = Scp(tmp_path, [Peer(ae_title="STORESCU", host="127.0.0.1"), Peer(ae_title="PYSCU")])
    node.scp.start("127.0.0.1")
    yield node
    node.scp.stop()
    node.index.close()


def test_echo_from_allowed_peer(scp: Scp) -> None:
    result = echoscu(scp.settings.port, aet="STORESCU")
    assert result.returncode == 0, result.stderr


def test_unknown_calling_ae_is_refused_and_logged(
    scp: Scp, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="node.dimse.scp"):
        result = echoscu(scp.settings.port, aet="INTRUDER")
    assert result.returncode != 0
    assert "Association Rejected" in result.stdout + result.stderr
    assert any("INTRUDER" in r.message and "127.0.0.1" in r.message for r in caplog.records)


def test_wrong_called_ae_is_refused(scp: Scp) -> None:
    result = echoscu(scp.settings.port, aet="STORESCU", called="SOMEONE")
    assert result.returncode != 0


def test_allowed_ae_from_wrong_host_is_refused(tmp_path: Path) -> None:
    node = Scp(tmp_path, [Peer(ae_title="STORESCU", host="10.9.9.9")])
    node.scp.start("127.0.0.1")
    try:
        assert echoscu(node.settings.port, aet="STORESCU").returncode != 0
    finally:
        node.scp.stop()


@pytest.mark.parametrize("name", list(ENCODINGS))
def test_every_encoding_is_stored_as_sent(scp: Scp, name: str) -> None:
    path = Path(get_testdata_file(name, download=False))
    result = storescu(scp.settings.port, [path], extra=[ENCODINGS[name]])
    assert result.returncode == 0, result.stdout + result.stderr
    sent = dcmread(path, stop_before_pixels=True)
    instance = scp.instance(str(sent.SOPInstanceUID))
    stored = dcmread(instance.path)
    assert stored.file_meta.TransferSyntaxUID == sent.file_meta.TransferSyntaxUID
    assert instance.transfer_syntax_uid == sent.file_meta.TransferSyntaxUID
    assert stored.PixelData == dcmread(path).PixelData
    # UIDs from the wire never become path components
    assert str(sent.SOPInstanceUID) not in instance.path
    # What DICOMweb queries answer with is read off the wire in every encoding.
    assert (instance.rows, instance.columns) == (sent.Rows, sent.Columns)
    assert instance.instance_number == (
        int(sent.InstanceNumber) if sent.get("InstanceNumber") not in (None, "") else None
    )
    with scp.index.session() as s:
        study = s.query(Study).filter_by(study_uid=str(sent.StudyInstanceUID)).one()
        assert study.patient_name == (str(sent.PatientName) if "PatientName" in sent else None)
        assert study.study_date == (sent.get("StudyDate") or None)


def test_duplicate_is_kept_once_and_not_new_work(scp: Scp) -> None:
    path = Path(get_testdata_file("CT_small.dcm", download=False))
    assert storescu(scp.settings.port, [path]).returncode == 0
    with scp.index.session() as s:
        count_before = s.query(Instance).count()
    assert storescu(scp.settings.port, [path]).returncode == 0
    with scp.index.session() as s:
        assert s.query(Instance).count() == count_before == 1
    assert len(scp.spool.files()) == 1


def _send(port: int, dataset: Dataset | Path, sop_class: str) -> int:
    ae = AE(ae_title="PYSCU")
    ae.add_requested_context(sop_class, ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", port, ae_title="MEDGEMMA")
    assert assoc.is_established
    status = assoc.send_c_store(dataset)
    assoc.release()
    return int(status.Status)


def _file_meta(sop_class: str, sop_uid: str) -> FileMetaDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return meta


def test_bad_input_gets_failure_status_and_nothing_else_is_affected(
    scp: Scp, tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    good = Path(get_testdata_file("CT_small.dcm", download=False))
    assert storescu(scp.settings.port, [good]).returncode == 0

    # A data set without its Study Instance UID
    missing = Dataset()
    missing.SOPClassUID = CTImageStorage
    missing.SOPInstanceUID = generate_uid()
    missing.SeriesInstanceUID = generate_uid()
    missing.file_meta = _file_meta(CTImageStorage, missing.SOPInstanceUID)
    with caplog.at_level(logging.ERROR, logger="node.dimse.scp"):
        status = _send(scp.settings.port, missing, CTImageStorage)
    assert status == DATASET_DOES_NOT_MATCH_SOP_CLASS
    assert any("StudyInstanceUID is missing" in r.message for r in caplog.records)

    # Bytes that are not a DICOM data set behind a valid file meta header
    garbage_path = tmp_path / "garbage.dcm"
    holder = Dataset()
    holder.file_meta = _file_meta(SecondaryCaptureImageStorage, generate_uid())
    holder.save_as(garbage_path, enforce_file_format=True)
    with garbage_path.open("ab") as handle:
        handle.write(b"\x08\x00\x18\x00UI\xff\x7fthis is not DICOM" * 3)
    # send the file's bytes as they are, without pynetdicom parsing them first
    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", True)
    caplog.clear()
    with caplog.at_level(logging.ERROR, logger="node.dimse.scp"):
        status = _send(scp.settings.port, garbage_path, SecondaryCaptureImageStorage)
    assert code_to_category(status) == "Failure"
    assert status in (CANNOT_UNDERSTAND, DATASET_DOES_NOT_MATCH_SOP_CLASS)
    assert len([r for r in caplog.records if "refused" in r.message]) == 1

    # Nothing else was lost, the node still works, nothing half-written is left behind
    assert scp.sop_uids() == {str(dcmread(good).SOPInstanceUID)}
    assert echoscu(scp.settings.port, aet="STORESCU").returncode == 0
    assert not list(scp.spool.root.rglob("*.tmp"))
