"""The one PACS client: every way a PACS can fail a C-FIND or a C-STORE raises the same
error naming the PACS, the service and the study, over real loopback associations with a
scripted pynetdicom peer; and the one backoff."""

from __future__ import annotations

import math
import threading
from collections.abc import Iterator

import pytest
from pydicom import Dataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE, evt
from pynetdicom.events import Event
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    CTImageStorage,
    SecondaryCaptureImageStorage,
    StudyRootQueryRetrieveInformationModelFind,
)

from node.backoff import doubling_wait
from node.config import DeliverySettings, PacsSettings
from node.dicomweb import qido
from node.dimse import scu
from node.pacs_errors import DeliveryRefused, PacsUnavailable
from tests.peers import free_port

PACS_AE = "SCRIPTED"
NODE_AE = "MEDGEMMA"
COUNTED = "1.2.826.0.1.3680043.8.498.71"  # answered: 3 instances
SILENT = "1.2.826.0.1.3680043.8.498.72"  # no answer until the node gives up
FAILING = "1.2.826.0.1.3680043.8.498.73"  # answered with a failure status
REFUSED_SOP = "1.2.826.0.1.3680043.8.498.74.1"  # C-STORE answered "out of resources"


class ScriptedPacs:
    """A PACS that answers C-FIND as the study UID asks and takes CT images only."""

    def __init__(self) -> None:
        self.port = free_port()
        self.stored: list[str] = []
        self.release = threading.Event()  # lets a SILENT query's handler finish
        ae = AE(ae_title=PACS_AE)
        ae.add_supported_context(StudyRootQueryRetrieveInformationModelFind)
        ae.add_supported_context(CTImageStorage)
        server = ae.start_server(
            ("127.0.0.1", self.port),
            block=False,
            evt_handlers=[(evt.EVT_C_FIND, self._find), (evt.EVT_C_STORE, self._store)],
        )
        assert server is not None
        self._server = server

    def settings(self, timeout: float = 5.0) -> PacsSettings:
        return PacsSettings(
            ae_title=PACS_AE, host="127.0.0.1", port=self.port, timeout_seconds=timeout
        )

    def _find(self, event: Event) -> Iterator[tuple[int, Dataset | None]]:
        study_uid = str(event.identifier.StudyInstanceUID)
        if study_uid == SILENT:
            self.release.wait(10)
            return
        if study_uid == FAILING:
            yield 0xC001, None  # unable to process
            return
        if study_uid != COUNTED:
            return  # no match: the PACS doesn't know the study
        answer = Dataset()
        answer.QueryRetrieveLevel = "STUDY"
        answer.StudyInstanceUID = study_uid
        answer.NumberOfStudyRelatedInstances = 3
        yield 0xFF00, answer

    def _store(self, event: Event) -> int:
        sop_uid = str(event.dataset.SOPInstanceUID)
        if sop_uid == REFUSED_SOP:
            return 0xA700
        self.stored.append(sop_uid)
        return 0x0000

    def stop(self) -> None:
        self.release.set()
        self._server.shutdown()


@pytest.fixture
def pacs() -> Iterator[ScriptedPacs]:
    peer = ScriptedPacs()
    yield peer
    peer.stop()


def _instance(sop_class: str, sop_uid: str | None = None) -> Dataset:
    ds = Dataset()
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid or generate_uid()
    ds.StudyInstanceUID = COUNTED
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "CT"
    ds.file_meta = Dataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return ds


def test_c_find_count_answers_or_raises(pacs: ScriptedPacs) -> None:
    settings = pacs.settings()
    count = scu.count_study_instances(COUNTED, pacs=settings, calling_ae=NODE_AE)
    assert count == 3
    unknown = "1.2.826.0.1.3680043.8.498.79"
    assert scu.count_study_instances(unknown, pacs=settings, calling_ae=NODE_AE) is None
    failing = f"{PACS_AE} at 127.0.0.1:{pacs.port} \\(C-FIND\\): C-FIND failed with status 0xC001"
    with pytest.raises(PacsUnavailable, match=f"{failing} .*of study {FAILING}"):
        scu.count_study_instances(FAILING, pacs=settings, calling_ae=NODE_AE)


def test_c_find_that_gets_no_answer_raises_instead_of_returning_none(pacs: ScriptedPacs) -> None:
    # Before one association helper, this C-FIND returned None (as if the PACS didn't know
    # the study) while the priors' C-FIND raised; now both raise.
    with pytest.raises(PacsUnavailable, match=f"no answer .*study {SILENT}.*connection lost"):
        scu.count_study_instances(SILENT, pacs=pacs.settings(timeout=1), calling_ae=NODE_AE)


def test_pacs_down_raises_for_c_find_qido_and_c_store() -> None:
    port = free_port()
    down = PacsSettings(ae_title="DOWNPACS", host="127.0.0.1", port=port, timeout_seconds=2)
    with pytest.raises(PacsUnavailable, match=f"DOWNPACS at 127.0.0.1:{port} .C-FIND.: assoc"):
        scu.count_study_instances(COUNTED, pacs=down, calling_ae=NODE_AE)
    web = down.model_copy(update={"dicomweb_url": f"http://127.0.0.1:{port}/dicom-web"})
    with pytest.raises(PacsUnavailable, match=f"DOWNPACS at http://127.0.0.1:{port}/dicom-web"):
        qido.count_study_instances(COUNTED, pacs=web)
    with pytest.raises(PacsUnavailable, match=r"DOWNPACS .* \(C-STORE\): association"):
        scu.store([_instance(CTImageStorage)], pacs=down, calling_ae=NODE_AE)


def test_c_store_checks_the_accepted_context_and_each_status(pacs: ScriptedPacs) -> None:
    settings = pacs.settings()
    ct = _instance(CTImageStorage)
    scu.store([ct], pacs=settings, calling_ae=NODE_AE)
    assert pacs.stored == [ct.SOPInstanceUID]
    secondary = _instance(SecondaryCaptureImageStorage)
    with pytest.raises(DeliveryRefused, match="does not accept Secondary Capture Image Storage"):
        scu.store([secondary], pacs=settings, calling_ae=NODE_AE)
    refused = _instance(CTImageStorage, REFUSED_SOP)
    with pytest.raises(DeliveryRefused, match=f"refused {REFUSED_SOP} of study {COUNTED}: .*A700"):
        scu.store([refused], pacs=settings, calling_ae=NODE_AE)
    assert pacs.stored == [ct.SOPInstanceUID]  # nothing refused was counted as stored


def test_doubling_wait() -> None:
    assert [doubling_wait(10, n) for n in range(5)] == [10, 10, 20, 40, 80]
    assert doubling_wait(10, 7, ceiling=600) == 600
    # An outage counted for ever neither overflows nor exceeds the ceiling.
    assert doubling_wait(1, 100_000, ceiling=600) == 600
    assert math.isfinite(doubling_wait(1, 100_000))
    delivery = DeliverySettings(retry_seconds=10, max_retry_seconds=600)
    assert [delivery.wait_after(n) for n in (1, 2, 3, 7, 12)] == [10, 20, 40, 600, 600]
