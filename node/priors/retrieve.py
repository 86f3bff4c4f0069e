"""Bring a prior study to the node: WADO-RS, C-GET or C-MOVE, within a deadline.

WADO-RS and C-GET deliver the instances on the requesting connection, so this module
writes them itself. C-MOVE makes the PACS open a new association to
``move_destination`` (the node's own SCP): that SCP must file every instance whose
C-STORE carries MoveOriginatorApplicationEntityTitle == ``calling_ae`` into ``dest``
(``PriorCache.study_dir(StudyInstanceUID)`` with ``write_instance``) before
answering success, so that when the PACS sends the final C-MOVE response the files
are on disk. Any failure removes the files this retrieval added.
"""

from __future__ import annotations

import io
import logging
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

import pydicom
from dicomweb_client.api import DICOMwebClient
from pydicom import Dataset
from pydicom.sr.codedict import codes
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, build_role, evt
from pynetdicom.association import Association
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    BasicTextSRStorage,
    Comprehensive3DSRStorage,
    ComprehensiveSRStorage,
    ComputedRadiographyImageStorage,
    CTImageStorage,
    DigitalMammographyXRayImageStorageForPresentation,
    DigitalXRayImageStorageForPresentation,
    DigitalXRayImageStorageForProcessing,
    EncapsulatedPDFStorage,
    EnhancedSRStorage,
    GrayscaleSoftcopyPresentationStateStorage,
    KeyObjectSelectionDocumentStorage,
    MRImageStorage,
    SecondaryCaptureImageStorage,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
)
from pynetdicom.status import code_to_category

from node import MANUFACTURER
from node.config import PacsSettings
from node.priors.cache import PriorCache, write_instance
from node.priors.find import describe_pacs
from node.priors.study import PriorsUnavailable, require_context

__all__ = [
    "GET_STORAGE_CLASSES",
    "RetrieveMethod",
    "prior_report_texts",
    "retrieve_prior",
    "retrieve_study",
]

log = logging.getLogger(__name__)

RetrieveMethod = Literal["auto", "wado", "c-get", "c-move"]

# What a C-GET accepts back (the SCP role is negotiated per SOP class): radiographs
# for comparison, the reports and presentation states that sit beside them, and the
# common cross-sectional classes. Each costs a presentation context (≤ 128 in all).
GET_STORAGE_CLASSES: tuple[str, ...] = (
    ComputedRadiographyImageStorage,
    DigitalXRayImageStorageForPresentation,
    DigitalXRayImageStorageForProcessing,
    DigitalMammographyXRayImageStorageForPresentation,
    SecondaryCaptureImageStorage,
    CTImageStorage,
    MRImageStorage,
    BasicTextSRStorage,
    EnhancedSRStorage,
    ComprehensiveSRStorage,
    Comprehensive3DSRStorage,
    GrayscaleSoftcopyPresentationStateStorage,
    KeyObjectSelectionDocumentStorage,
    EncapsulatedPDFStorage,
)

# Whole instances as stored: "*" lets the PACS skip transcoding.
_WADO_MEDIA_TYPES: tuple[tuple[str, str], ...] = (("application/dicom", "*"),)

_PENDING = frozenset({0xFF00, 0xFF01})
_STORE_SUCCESS = 0x0000
_STORE_OUT_OF_RESOURCES = 0xA700


def retrieve_study(
    study_uid: str,
    *,
    pacs: PacsSettings,
    calling_ae: str,
    dest: Path,
    method: RetrieveMethod = "auto",
    timeout: float,
    move_destination: str | None = None,
) -> list[Path]:
    """Retrieve every instance of ``study_uid`` into ``dest``; return the Part 10 files.

    ``auto`` is WADO-RS when ``pacs.dicomweb_url`` is set, else C-MOVE when a
    ``move_destination`` is given (the node's own AE, which the PACS must know), else
    C-GET (no PACS configuration needed, but not every PACS offers it).

    Raises
    ------
    ValueError
        ``wado`` without a DICOMweb URL, ``c-move`` without a move destination, or a
        non-positive timeout.
    PriorsUnavailable
        The PACS is down, refused, failed, or didn't deliver within ``timeout``
        seconds; files this call wrote are removed.
    """
    if timeout <= 0:
        raise ValueError(f"timeout must be > 0 seconds, got {timeout}")
    if method == "auto":
        method = "wado" if pacs.dicomweb_url else ("c-move" if move_destination else "c-get")
    if method == "wado" and not pacs.dicomweb_url:
        raise ValueError(f"method 'wado' needs pacs.dicomweb_url (PACS {pacs.ae_title} has none)")
    if method == "c-move" and not move_destination:
        raise ValueError("method 'c-move' needs move_destination (the node's own AE title)")
    dest.mkdir(parents=True, exist_ok=True)
    before = set(dest.glob("*.dcm"))
    started = time.monotonic()
    try:
        if method == "wado":
            files = _wado(study_uid, pacs=pacs, dest=dest, timeout=timeout)
        elif method == "c-get":
            files = _c_get(study_uid, pacs=pacs, calling_ae=calling_ae, dest=dest, timeout=timeout)
        elif method == "c-move":
            assert move_destination is not None
            files = _c_move(
                study_uid,
                pacs=pacs,
                calling_ae=calling_ae,
                dest=dest,
                timeout=timeout,
                move_destination=move_destination,
            )
        else:
            raise ValueError(f"method must be auto, wado, c-get or c-move, not {method!r}")
    except BaseException:
        removed = _remove_new_files(dest, before)
        if removed:
            log.info("removed %d partial file(s) of study %s", removed, study_uid)
        raise
    log.info(
        "retrieved %d instance(s) of study %s by %s in %.2f s",
        len(files),
        study_uid,
        method,
        time.monotonic() - started,
    )
    return files


def retrieve_prior(
    cache: PriorCache,
    study_uid: str,
    *,
    pacs: PacsSettings,
    calling_ae: str,
    method: RetrieveMethod = "auto",
    timeout: float,
    move_destination: str | None = None,
) -> list[Path]:
    """``retrieve_study`` into the cache; a study already complete there is not fetched again."""
    if cache.is_complete(study_uid):
        files = cache.files(study_uid)
        log.debug("prior study %s: %d instance(s) from the cache", study_uid, len(files))
        return files
    dest = cache.prepare(study_uid)
    try:
        files = retrieve_study(
            study_uid,
            pacs=pacs,
            calling_ae=calling_ae,
            dest=dest,
            method=method,
            timeout=timeout,
            move_destination=move_destination,
        )
    except BaseException:
        cache.discard(study_uid)
        raise
    cache.mark_complete(study_uid)
    return files


def prior_report_texts(paths: Sequence[Path], *, manufacturer: str = MANUFACTURER) -> list[str]:
    """The report texts of the SRs among ``paths`` that ``manufacturer`` (this node) wrote,
    oldest content first: "FINDINGS: … IMPRESSION: …" as the model wrote them."""
    reports: list[tuple[str, list[str]]] = []
    for path in paths:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        if str(ds.get("Modality", "")).upper() != "SR":
            continue
        if str(ds.get("Manufacturer", "")).strip() != manufacturer:
            continue
        stamp = f"{ds.get('ContentDate', '')}{ds.get('ContentTime', '')}"
        texts = dict(_texts(ds.get("ContentSequence", [])))
        sections = [
            f"{heading}: {texts[concept]}"
            for concept, heading in _REPORT_SECTIONS.items()
            if concept in texts
        ]
        # A measurement report keeps the sections apart; a findings SR has "Finding" items.
        found = ["\n".join(sections)] if sections else _all(ds, _FINDING)
        reports.append((stamp, found))
    reports.sort(key=lambda pair: pair[0])
    return [text for _, texts in reports for text in texts]


_FINDING = (codes.DCM.Finding.value, codes.DCM.Finding.scheme_designator)
_REPORT_SECTIONS = {
    (codes.LN.Findings.value, codes.LN.Findings.scheme_designator): "FINDINGS",
    ("121073", "DCM"): "IMPRESSION",
}


def _all(ds: Dataset, concept: tuple[str, str]) -> list[str]:
    return [text for name, text in _texts(ds.get("ContentSequence", [])) if name == concept]


def _wado(study_uid: str, *, pacs: PacsSettings, dest: Path, timeout: float) -> list[Path]:
    assert pacs.dicomweb_url is not None
    where = describe_pacs(pacs, "WADO-RS")
    deadline = time.monotonic() + timeout
    client = DICOMwebClient(url=pacs.dicomweb_url, timeout=timeout)
    client.set_http_retry_params(retry=False)
    files: list[Path] = []
    try:
        for ds in client.iter_study(study_uid, media_types=_WADO_MEDIA_TYPES):
            files.append(write_instance(dest, str(ds.SOPInstanceUID), _part10(ds)))
            if time.monotonic() > deadline:
                raise PriorsUnavailable(
                    f"{where}: study {study_uid} not retrieved within {timeout:g} s "
                    f"({len(files)} instance(s) so far)"
                )
    except PriorsUnavailable:
        raise
    except Exception as e:  # requests' connection, HTTP and decoding errors
        raise PriorsUnavailable(f"{where}: study {study_uid}: {e}") from e
    if not files:
        raise PriorsUnavailable(f"{where}: study {study_uid}: the PACS returned no instances")
    return files


def _part10(ds: Dataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _client(calling_ae: str, timeout: float) -> AE:
    ae = AE(ae_title=calling_ae)
    ae.acse_timeout = timeout
    ae.dimse_timeout = timeout
    ae.network_timeout = timeout
    ae.connection_timeout = min(timeout, 10.0)
    return ae


def _study_query(study_uid: str) -> Dataset:
    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    query.StudyInstanceUID = study_uid
    return query


def _c_get(
    study_uid: str, *, pacs: PacsSettings, calling_ae: str, dest: Path, timeout: float
) -> list[Path]:
    where = describe_pacs(pacs, "C-GET")
    written: list[Path] = []

    def on_store(event: Any) -> int:
        try:
            data = event.encoded_dataset(include_meta=True)
            written.append(write_instance(dest, str(event.request.AffectedSOPInstanceUID), data))
        except OSError:
            log.exception("C-GET of study %s: an instance could not be written", study_uid)
            return _STORE_OUT_OF_RESOURCES
        return _STORE_SUCCESS

    ae = _client(calling_ae, timeout)
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
    for sop_class in GET_STORAGE_CLASSES:
        ae.add_requested_context(sop_class, ALL_TRANSFER_SYNTAXES)
    # The PACS sends the instances back as C-STOREs on this association: we are their SCP.
    roles: list[Any] = [build_role(c, scp_role=True) for c in GET_STORAGE_CLASSES]
    assoc = ae.associate(
        pacs.host,
        pacs.port,
        ae_title=pacs.ae_title,
        ext_neg=roles,
        evt_handlers=[(evt.EVT_C_STORE, on_store)],
    )
    if not assoc.is_established:
        raise PriorsUnavailable(f"{where}: association was not accepted (study {study_uid})")
    require_context(
        assoc, StudyRootQueryRetrieveInformationModelGet, where=where, service="Study Root C-GET"
    )
    responses = assoc.send_c_get(_study_query(study_uid), StudyRootQueryRetrieveInformationModelGet)
    completed = _final_status(responses, assoc, where=where, study_uid=study_uid, timeout=timeout)
    return _check_count(sorted(set(written)), completed, where=where, study_uid=study_uid)


def _c_move(
    study_uid: str,
    *,
    pacs: PacsSettings,
    calling_ae: str,
    dest: Path,
    timeout: float,
    move_destination: str,
) -> list[Path]:
    where = describe_pacs(pacs, "C-MOVE")
    ae = _client(calling_ae, timeout)
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelMove)
    assoc = ae.associate(pacs.host, pacs.port, ae_title=pacs.ae_title)
    if not assoc.is_established:
        raise PriorsUnavailable(f"{where}: association was not accepted (study {study_uid})")
    require_context(
        assoc, StudyRootQueryRetrieveInformationModelMove, where=where, service="Study Root C-MOVE"
    )
    responses = assoc.send_c_move(
        _study_query(study_uid), move_destination, StudyRootQueryRetrieveInformationModelMove
    )
    completed = _final_status(responses, assoc, where=where, study_uid=study_uid, timeout=timeout)
    # The destination SCP answers each C-STORE only after the file is in place, and
    # the PACS sends the final response after the last C-STORE: the files are here.
    files = sorted(p for p in dest.glob("*.dcm") if not p.name.startswith("."))
    return _check_count(files, completed, where=where, study_uid=study_uid)


def _final_status(
    responses: Iterator[tuple[Dataset, Dataset | None]],
    assoc: Association,
    *,
    where: str,
    study_uid: str,
    timeout: float,
) -> int | None:
    """Walk a C-GET/C-MOVE's responses under a deadline; return the completed sub-operations.

    The DIMSE timeout only bounds the gap between two responses; a PACS trickling
    instances could run for ever, so a timer aborts the association at the deadline.
    """
    expired = threading.Event()

    def expire() -> None:
        expired.set()
        assoc.abort()

    timer = threading.Timer(timeout, expire)
    timer.daemon = True
    timer.start()
    final: Dataset | None = None
    try:
        for status, _identifier in responses:
            if not status or "Status" not in status:
                break  # connection lost, aborted or timed out: judged below
            if int(status.Status) not in _PENDING:
                final = status
    finally:
        timer.cancel()
        if assoc.is_established:
            assoc.release()
    if expired.is_set():
        raise PriorsUnavailable(f"{where}: study {study_uid} not retrieved within {timeout:g} s")
    if final is None:
        raise PriorsUnavailable(
            f"{where}: study {study_uid}: no final response (connection lost or timed out)"
        )
    code = int(final.Status)
    failed = int(final.get("NumberOfFailedSuboperations", 0) or 0)
    if code_to_category(code) != "Success" or failed:
        raise PriorsUnavailable(
            f"{where}: study {study_uid}: status 0x{code:04X}, {failed} failed sub-operation(s)"
        )
    completed = final.get("NumberOfCompletedSuboperations")
    return int(completed) if completed not in (None, "") else None


def _check_count(
    files: list[Path], completed: int | None, *, where: str, study_uid: str
) -> list[Path]:
    if not files:
        raise PriorsUnavailable(f"{where}: study {study_uid}: no instances arrived")
    if completed is not None and len(files) < completed:
        raise PriorsUnavailable(
            f"{where}: study {study_uid}: the PACS sent {completed} instance(s), "
            f"{len(files)} were filed"
        )
    return files


def _remove_new_files(dest: Path, before: set[Path]) -> int:
    removed = 0
    for path in dest.glob("*"):
        if path.is_file() and path not in before:
            path.unlink(missing_ok=True)
            removed += 1
    return removed


def _texts(items: Sequence[Dataset]) -> Iterator[tuple[tuple[str, str], str]]:
    """(concept code, text) of every non-empty TEXT item, depth first in document order."""
    for item in items:
        if str(item.get("ValueType", "")) == "TEXT":
            names = item.get("ConceptNameCodeSequence") or []
            text = str(item.get("TextValue", "")).strip()
            if names and text:
                name = names[0]
                yield (str(name.CodeValue), str(name.CodingSchemeDesignator)), text
        yield from _texts(item.get("ContentSequence", []))
