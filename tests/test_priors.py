"""Priors against real peers: Orthanc (C-FIND/C-GET/C-MOVE, QIDO-RS/WADO-RS) and DCMTK
``dcmqrscp`` (C-FIND/C-MOVE) hold a patient's current and earlier chest CRs, an older
study beyond the window, and another patient with the same name."""

from __future__ import annotations

import datetime
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom import Dataset
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt

from fixtures.priors import (
    CURRENT_DATE,
    PRIOR_FINDING,
    add_view,
    days_before,
    make_node_report,
    make_prior_pair,
    make_unrelated_same_name,
)
from fixtures.series import make_cr_study
from node.config import PacsSettings
from node.priors import (
    PriorCache,
    PriorStudy,
    PriorsUnavailable,
    choose_prior,
    choose_prior_image,
    find_candidate_studies,
    prior_report_texts,
    retrieve_prior,
    retrieve_study,
    write_instance,
)
from tests.conftest import storescu
from tests.peers import DcmQrScp, Orthanc, free_port

NODE_AE = "MEDGEMMA"
MOVE_AE = "PRIORSCP"
PATIENT = "MGN-PRIOR-1"
TIMEOUT = 20.0


@dataclass(frozen=True)
class Studies:
    current: Path
    prior: Path  # PA
    prior_ap: Path
    prior_sr: Path
    too_old: Path
    unrelated: Path

    def uid(self, path: Path) -> str:
        return str(pydicom.dcmread(path, stop_before_pixels=True).StudyInstanceUID)

    def header(self, path: Path) -> Dataset:
        return pydicom.dcmread(path, stop_before_pixels=True)

    @property
    def all(self) -> list[Path]:
        return [
            self.current,
            self.prior,
            self.prior_ap,
            self.prior_sr,
            self.too_old,
            self.unrelated,
        ]


class MoveTarget:
    """The node's SCP as C-MOVE destination: files instances moved on ``calling_ae``'s
    behalf into the priors cache, by study; ``hold`` makes it stall after the first."""

    def __init__(self) -> None:
        self.port = free_port()
        self.cache: PriorCache | None = None
        self.originators: list[str] = []
        self.hold: threading.Event | None = None
        self._filed = 0
        ae = AE(ae_title=MOVE_AE)
        for context in AllStoragePresentationContexts:
            if context.abstract_syntax is not None:
                ae.add_supported_context(context.abstract_syntax, ALL_TRANSFER_SYNTAXES)
        server = ae.start_server(
            ("127.0.0.1", self.port), block=False, evt_handlers=[(evt.EVT_C_STORE, self._store)]
        )
        assert server is not None
        self._server = server

    def expect(self, cache: PriorCache, *, hold: threading.Event | None = None) -> None:
        self.cache, self.hold, self._filed = cache, hold, 0
        self.originators.clear()

    def _store(self, event: Any) -> int:
        self.originators.append(str(event.request.MoveOriginatorApplicationEntityTitle).strip())
        if self.hold is not None and self._filed >= 1:
            self.hold.wait(TIMEOUT)
            return 0xA700  # refused after the hold: nothing lands behind the cleanup
        assert self.cache is not None
        study_uid = str(event.dataset.StudyInstanceUID)
        write_instance(
            self.cache.study_dir(study_uid),
            str(event.request.AffectedSOPInstanceUID),
            event.encoded_dataset(include_meta=True),
        )
        self._filed += 1
        return 0x0000

    def stop(self) -> None:
        self._server.shutdown()



@pytest.fixture(scope="module")
def studies(tmp_path_factory: pytest.TempPathFactory) -> Studies:
    out = tmp_path_factory.mktemp("priors-data")
    current, prior = make_prior_pair(out, patient_id=PATIENT, prior_days_before=200)
    return Studies(
        current=current,
        prior=prior,
        prior_ap=add_view(prior, out / "prior", view="AP"),
        prior_sr=make_node_report(prior, out / "prior"),
        too_old=make_cr_study(
            out / "old", patient_id=PATIENT, study_date=days_before(CURRENT_DATE, 1000)
        ),
        unrelated=make_unrelated_same_name(out, same_name_as=PATIENT, days_before_current=30),
    )


@pytest.fixture(scope="module")
def move_target() -> Iterator[MoveTarget]:
    target = MoveTarget()
    yield target
    target.stop()


@pytest.fixture(scope="module")
def orthanc_pacs(
    tmp_path_factory: pytest.TempPathFactory, studies: Studies, move_target: MoveTarget
) -> Iterator[Orthanc]:
    pacs = Orthanc(tmp_path_factory.mktemp("priors-orthanc"))
    # The node's AE must be a known modality for C-GET; the move target for C-MOVE.
    pacs.start(
        node_aet=NODE_AE,
        node_port=free_port(),
        extra_modalities={"priorscp": [MOVE_AE, "127.0.0.1", move_target.port]},
    )
    try:
        for path in studies.all:
            pacs.upload(path)
        yield pacs
    finally:
        pacs.stop()


@pytest.fixture(scope="module")
def dcmqrscp(
    tmp_path_factory: pytest.TempPathFactory, studies: Studies, move_target: MoveTarget
) -> Iterator[DcmQrScp]:
    server = DcmQrScp(
        tmp_path_factory.mktemp("priors-dcmqrscp"), {MOVE_AE: move_target.port}
    ).start()
    try:
        # -R: propose what the files are (the default list lacks Comprehensive 3D SR).
        sent = storescu(server.port, studies.all, called=server.aet, extra=["-R"])
        assert sent.returncode == 0, sent.stderr
        yield server
    finally:
        server.stop()


def dimse(orthanc: Orthanc) -> PacsSettings:
    return PacsSettings(ae_title=orthanc.aet, host="127.0.0.1", port=orthanc.dicom_port)


def web(orthanc: Orthanc) -> PacsSettings:
    return dimse(orthanc).model_copy(update={"dicomweb_url": orthanc.dicomweb_url})


def sop_uids(paths: list[Path]) -> set[str]:
    return {str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in paths}


def check_found_and_chosen(studies: Studies, pacs: PacsSettings) -> PriorStudy:
    current = studies.header(studies.current)
    found = find_candidate_studies(current, pacs=pacs, calling_ae=NODE_AE)
    uids = {study.study_uid for study in found}
    expected = {studies.uid(p) for p in (studies.current, studies.prior, studies.too_old)}
    assert uids == expected  # the same-name patient is not even asked for
    by_uid = {study.study_uid: study for study in found}
    prior = by_uid[studies.uid(studies.prior)]
    assert prior.patient_id == PATIENT
    assert prior.study_date == datetime.date(2023, 11, 14)
    assert "CR" in prior.modalities
    # Offered the same-name patient's (more recent) study too, choose still refuses it.
    other = find_candidate_studies(studies.header(studies.unrelated), pacs=pacs, calling_ae=NODE_AE)
    choice = choose_prior(current, [*found, *other])
    assert choice.prior is not None and choice.prior.study_uid == prior.study_uid
    assert any("PatientID differs" in r and other[0].study_uid in r for r in choice.reasons)
    assert any("it is the current study" in r for r in choice.reasons)
    assert any("beyond the 730-day window" in r for r in choice.reasons)
    return choice.prior


def check_prior_files(studies: Studies, files: list[Path]) -> None:
    assert sop_uids(files) == sop_uids([studies.prior, studies.prior_ap, studies.prior_sr])
    instances = [pydicom.dcmread(p) for p in files]
    current = studies.header(studies.current)
    chosen = choose_prior_image(current, instances)
    assert chosen is not None and chosen.ViewPosition == "PA"
    current.ViewPosition = "AP"
    chosen = choose_prior_image(current, instances)
    assert chosen is not None and chosen.ViewPosition == "AP"
    assert prior_report_texts(files) == [f"FINDINGS: {PRIOR_FINDING}"]


# --- choose (pure) -----------------------------------------------------------------


def _candidate(uid: str, days: int, **changes: Any) -> PriorStudy:
    base = PriorStudy(
        study_uid=uid,
        study_date=datetime.date(2024, 6, 1) - datetime.timedelta(days=days),
        study_time=datetime.time(12, 0),
        modalities=("CR",),
        patient_id="P1",
        issuer_of_patient_id="SITE-A",
        patient_name="DOE^JANE",
        accession_number="",
        study_description="",
        number_of_instances=1,
    )
    return replace(base, **changes)


def _current(**keywords: Any) -> Dataset:
    ds = Dataset()
    ds.StudyInstanceUID = "1.2.3.0"
    ds.StudyDate, ds.StudyTime = "20240601", "120000"
    ds.Modality, ds.PatientID, ds.IssuerOfPatientID = "DX", "P1", "SITE-A"
    for keyword, value in keywords.items():
        setattr(ds, keyword, value)
    return ds


def test_choose_prior_rules() -> None:
    candidates = [
        _candidate("1.2.3.0", 0),  # the current study
        _candidate("1.2.3.1", 10, patient_id="P2"),  # same name, other ID
        _candidate("1.2.3.2", 20, issuer_of_patient_id="SITE-B"),
        _candidate("1.2.3.3", 30, modalities=("CT", "SR")),
        _candidate("1.2.3.4", -5),  # later
        _candidate("1.2.3.5", 0, study_time=datetime.time(13, 0)),  # same day, later
        _candidate("1.2.3.6", 900),  # too old
        _candidate("1.2.3.7", 400, issuer_of_patient_id=None),  # issuer absent: fine
        _candidate("1.2.3.8", 100, modalities=("CR", "SR")),  # the most recent eligible
        _candidate("1.2.3.9", 0, study_time=datetime.time(8, 0)),  # same day, earlier, DX
    ]
    choice = choose_prior(_current(), candidates)
    assert choice.prior is not None and choice.prior.study_uid == "1.2.3.9"
    reasons = "\n".join(choice.reasons)
    for uid, why in [
        ("1.2.3.0", "current study"),
        ("1.2.3.1", "PatientID differs"),
        ("1.2.3.2", "IssuerOfPatientID differs"),
        ("1.2.3.3", "not in the current study's family"),
        ("1.2.3.4", "not earlier"),
        ("1.2.3.5", "not earlier"),
        ("1.2.3.6", "beyond the 730-day window"),
        ("1.2.3.7", "older than 1.2.3.9"),
        ("1.2.3.8", "older than 1.2.3.9"),
    ]:
        assert f"{uid}: {why}" in reasons or (uid in reasons and why in reasons), (uid, reasons)
    assert len(choice.reasons) == len(candidates)
    # Without today's earlier study the 100-day one wins; a short window leaves none.
    assert choose_prior(_current(), candidates[:-1]).prior.study_uid == "1.2.3.8"  # type: ignore[union-attr]
    short = choose_prior(_current(), candidates, window_days=0)
    assert short.prior is not None and short.prior.study_uid == "1.2.3.9"
    none = choose_prior(_current(), candidates[:-2], window_days=50)
    assert none.prior is None and any("beyond the 50-day window" in r for r in none.reasons)
    empty = choose_prior(_current(), [])
    assert empty.prior is None and empty.reasons == [
        "no candidate studies for this patient at the PACS"
    ]


def test_choose_prior_same_day_without_time_is_not_a_prior() -> None:
    choice = choose_prior(_current(), [_candidate("1.2.3.1", 0, study_time=None)])
    assert choice.prior is None and "StudyTime is missing" in choice.reasons[0]


def test_choose_prior_image_view_body_part_and_non_images() -> None:
    def image(view: str, body: str = "CHEST", number: int = 1) -> Dataset:
        ds = Dataset()
        ds.Modality, ds.Rows, ds.Columns = "CR", 8, 8
        ds.ViewPosition, ds.BodyPartExamined, ds.InstanceNumber = view, body, number
        return ds

    report = Dataset()
    report.Modality = "SR"
    lateral, ap, pa, pa_abdomen = (
        image("LL"),
        image("AP"),
        image("PA", number=2),
        image("PA", "ABDOMEN"),
    )
    current = image("PA")
    assert choose_prior_image(current, [report, lateral, ap, pa_abdomen, pa]) is pa
    assert choose_prior_image(current, [report, lateral, ap, pa_abdomen]) is ap
    assert choose_prior_image(image("LL"), [ap, lateral]) is lateral
    assert choose_prior_image(current, [report, pa_abdomen]) is None
    no_part = image("AP")
    del no_part.BodyPartExamined
    assert choose_prior_image(current, [pa_abdomen, no_part]) is no_part


# --- DIMSE ---------------------------------------------------------------------------


def test_c_find_and_c_get_from_orthanc(
    orthanc_pacs: Orthanc, studies: Studies, tmp_path: Path
) -> None:
    pacs = dimse(orthanc_pacs)
    prior = check_found_and_chosen(studies, pacs)
    cache = PriorCache(tmp_path / "cache")
    files = retrieve_prior(cache, prior.study_uid, pacs=pacs, calling_ae=NODE_AE, timeout=TIMEOUT)
    assert all(p.parent == cache.study_dir(prior.study_uid) for p in files)
    assert prior.study_uid not in str(files[0])  # hashed, never the raw UID
    check_prior_files(studies, files)
    # Complete in the cache: a PACS that is gone now doesn't matter.
    gone = PacsSettings(ae_title="GONE", host="127.0.0.1", port=free_port())
    again = retrieve_prior(cache, prior.study_uid, pacs=gone, calling_ae=NODE_AE, timeout=1)
    assert again == files


def test_c_find_and_c_move_from_orthanc(
    orthanc_pacs: Orthanc, studies: Studies, move_target: MoveTarget, tmp_path: Path
) -> None:
    pacs = dimse(orthanc_pacs)
    prior = check_found_and_chosen(studies, pacs)
    cache = PriorCache(tmp_path / "cache")
    move_target.expect(cache)
    files = retrieve_prior(
        cache,
        prior.study_uid,
        pacs=pacs,
        calling_ae=NODE_AE,
        method="c-move",
        move_destination=MOVE_AE,
        timeout=TIMEOUT,
    )
    check_prior_files(studies, files)
    assert set(move_target.originators) == {NODE_AE}


def test_c_find_and_c_move_from_dcmqrscp(
    dcmqrscp: DcmQrScp, studies: Studies, move_target: MoveTarget, tmp_path: Path
) -> None:
    pacs = PacsSettings(ae_title=dcmqrscp.aet, host="127.0.0.1", port=dcmqrscp.port)
    # dcmqrscp has no ModalitiesInStudy: the series-level fallback supplies it.
    prior = check_found_and_chosen(studies, pacs)
    assert prior.modalities == ("CR", "SR")
    cache = PriorCache(tmp_path / "cache")
    move_target.expect(cache)
    files = retrieve_study(
        prior.study_uid,
        pacs=pacs,
        calling_ae=NODE_AE,
        dest=cache.study_dir(prior.study_uid),
        method="c-move",
        move_destination=MOVE_AE,
        timeout=TIMEOUT,
    )
    check_prior_files(studies, files)
    assert set(move_target.originators) == {NODE_AE}


def test_c_move_past_the_deadline_leaves_no_files(
    orthanc_pacs: Orthanc, studies: Studies, move_target: MoveTarget, tmp_path: Path
) -> None:
    cache = PriorCache(tmp_path / "cache")
    hold = threading.Event()
    move_target.expect(cache, hold=hold)
    prior_uid = studies.uid(studies.prior)
    try:
        with pytest.raises(PriorsUnavailable, match=r"not retrieved within 1\.5 s") as raised:
            retrieve_prior(
                cache,
                prior_uid,
                pacs=dimse(orthanc_pacs),
                calling_ae=NODE_AE,
                method="c-move",
                move_destination=MOVE_AE,
                timeout=1.5,
            )
        assert prior_uid in str(raised.value) and orthanc_pacs.aet in str(raised.value)
        assert move_target._filed == 1  # one file had landed before the stall …
        assert not cache.study_dir(prior_uid).exists()  # … and is gone with its directory
    finally:
        hold.set()


# --- DICOMweb ------------------------------------------------------------------------


def test_qido_and_wado_from_orthanc(
    orthanc_pacs: Orthanc, studies: Studies, tmp_path: Path
) -> None:
    pacs = web(orthanc_pacs)
    prior = check_found_and_chosen(studies, pacs)
    assert prior.number_of_instances == 3
    files = retrieve_study(
        prior.study_uid, pacs=pacs, calling_ae=NODE_AE, dest=tmp_path / "wado", timeout=TIMEOUT
    )
    check_prior_files(studies, files)
    # What was stored comes back as stored (no transcoding): same pixel bytes.
    by_sop = {str(pydicom.dcmread(p).SOPInstanceUID): p for p in files}
    original = pydicom.dcmread(studies.prior)
    assert pydicom.dcmread(by_sop[original.SOPInstanceUID]).PixelData == original.PixelData


# --- no prior, PACS down ---------------------------------------------------------------


def test_patient_without_prior_gets_none_with_reasons(
    orthanc_pacs: Orthanc, studies: Studies
) -> None:
    current = studies.header(studies.unrelated)
    found = find_candidate_studies(current, pacs=dimse(orthanc_pacs), calling_ae=NODE_AE)
    choice = choose_prior(current, found)
    assert choice.prior is None
    assert choice.reasons == [f"rejected {current.StudyInstanceUID}: it is the current study"]


def test_pacs_down_raises_priors_unavailable(studies: Studies, tmp_path: Path) -> None:
    port = free_port()
    down = PacsSettings(ae_title="DOWNPACS", host="127.0.0.1", port=port, timeout_seconds=2)
    down_web = down.model_copy(update={"dicomweb_url": f"http://127.0.0.1:{port}/dicom-web"})
    current = studies.header(studies.current)
    for pacs, transport in [(down, "C-FIND"), (down_web, "QIDO-RS")]:
        with pytest.raises(PriorsUnavailable, match=f"DOWNPACS.*{port}.*{transport}"):
            find_candidate_studies(current, pacs=pacs, calling_ae=NODE_AE)
    uid = str(current.StudyInstanceUID)
    for pacs, method, transport in [
        (down, "c-get", "C-GET"),
        (down, "c-move", "C-MOVE"),
        (down_web, "wado", "WADO-RS"),
    ]:
        with pytest.raises(PriorsUnavailable, match=f"DOWNPACS.*{port}.*{transport}") as raised:
            retrieve_study(
                uid,
                pacs=pacs,
                calling_ae=NODE_AE,
                dest=tmp_path / method,
                method=method,  # type: ignore[arg-type]
                timeout=2,
                move_destination=MOVE_AE,
            )
        if method != "wado":  # an association refusal has no study yet; the text says which
            assert "association" in str(raised.value)
        assert not list((tmp_path / method).iterdir())


def test_cache_cleans_old_studies(tmp_path: Path) -> None:
    cache = PriorCache(tmp_path / "cache")
    for uid in ("1.2.3", "1.2.4"):
        write_instance(cache.study_dir(uid), f"{uid}.1", b"x")
        cache.mark_complete(uid)
    old = cache.study_dir("1.2.3") / ".complete"
    stamp = old.stat().st_mtime - 10 * 86400
    os.utime(old, (stamp, stamp))
    assert cache.clean_older_than(5) == 1
    assert not cache.is_complete("1.2.3") and cache.is_complete("1.2.4")


def test_peer_without_query_retrieve_raises_priors_unavailable(
    studies: Studies, move_target: MoveTarget, tmp_path: Path
) -> None:
    # A storage-only SCP offers neither C-FIND nor C-GET: with no context accepted the
    # association fails (C-FIND); with only the storage contexts accepted (C-GET) it is
    # established but the service is refused.
    storage_only = PacsSettings(ae_title=MOVE_AE, host="127.0.0.1", port=move_target.port)
    current = studies.header(studies.current)
    with pytest.raises(PriorsUnavailable, match=f"{MOVE_AE}.*C-FIND.*association was not accepted"):
        find_candidate_studies(current, pacs=storage_only, calling_ae=NODE_AE)
    with pytest.raises(PriorsUnavailable, match="does not accept Study Root C-GET"):
        retrieve_study(
            str(current.StudyInstanceUID),
            pacs=storage_only,
            calling_ae=NODE_AE,
            dest=tmp_path / "get",
            timeout=2,
        )
