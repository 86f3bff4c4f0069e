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
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Literal, Required, TypedDict, Unpack

import pydicom
from pydicom import Dataset
from pydicom.sr.codedict import codes
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
)

from node import MANUFACTURER
from node.config import PacsSettings
from node.dicomweb.client import dicomweb_client, unavailable_on_failure
from node.dimse.association import associate
from node.pacs_errors import PacsUnavailable, describe_pacs
from node.priors.cache import PriorCache, write_instance

__all__ = [
    "GET_STORAGE_CLASSES",
    "RetrieveMethod",
    "RetrieveOptions",
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
    PacsUnavailable (PriorsUnavailable is its name in node.priors)
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


class RetrieveOptions(TypedDict, total=False):
    """How a study is fetched: ``retrieve_study``'s keyword arguments but ``dest``."""

    pacs: Required[PacsSettings]
    calling_ae: Required[str]
    method: RetrieveMethod
    timeout: Required[float]
    move_destination: str | None


def retrieve_prior(
    cache: PriorCache, study_uid: str, **options: Unpack[RetrieveOptions]
) -> list[Path]:
    """``retrieve_study`` into the cache; a study already complete there is not fetched again."""
    if cache.is_complete(study_uid):
        files = cache.files(study_uid)
        log.debug("prior study %s: %d instance(s) from the cache", study_uid, len(files))
        return files
    dest = cache.prepare(study_uid)
    try:
        files = retrieve_study(study_uid, dest=dest, **options)
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
    client = dicomweb_client(pacs.dicomweb_url, timeout=timeout)
    files: list[Path] = []
    with unavailable_on_failure(f"{where}: study {study_uid}"):
        for ds in client.iter_study(study_uid, media_types=_WADO_MEDIA_TYPES):
            files.append(write_instance(dest, str(ds.SOPInstanceUID), _part10(ds)))
            if time.monotonic() > deadline:
                raise PacsUnavailable(
                    f"{where}: study {study_uid} not retrieved within {timeout:g} s "
                    f"({len(files)} instance(s) so far)"
                )
    if not files:
        raise PacsUnavailable(f"{where}: study {study_uid}: the PACS returned no instances")
    return files


def _part10(ds: Dataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _study_query(study_uid: str) -> Dataset:
    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    query.StudyInstanceUID = study_uid
    return query


def _c_get(
    study_uid: str, *, pacs: PacsSettings, calling_ae: str, dest: Path, timeout: float
) -> list[Path]:
    written: list[Path] = []

    def file_instance(sop_uid: str, data: bytes) -> None:
        written.append(write_instance(dest, sop_uid, data))

    with associate(
        pacs,
        calling_ae,
        "C-GET",
        timeout=timeout,
        study_uid=study_uid,
        storage_classes=GET_STORAGE_CLASSES,
        file_instance=file_instance,
    ) as peer:
        completed = peer.get(_study_query(study_uid), within=timeout)
    return _check_count(sorted(set(written)), completed, where=peer.where, study_uid=study_uid)


def _c_move(
    study_uid: str,
    *,
    pacs: PacsSettings,
    calling_ae: str,
    dest: Path,
    timeout: float,
    move_destination: str,
) -> list[Path]:
    with associate(pacs, calling_ae, "C-MOVE", timeout=timeout, study_uid=study_uid) as peer:
        completed = peer.move(_study_query(study_uid), move_destination, within=timeout)
    # The destination SCP answers each C-STORE only after the file is in place, and
    # the PACS sends the final response after the last C-STORE: the files are here.
    files = sorted(p for p in dest.glob("*.dcm") if not p.name.startswith("."))
    return _check_count(files, completed, where=peer.where, study_uid=study_uid)


def _check_count(
    files: list[Path], completed: int | None, *, where: str, study_uid: str
) -> list[Path]:
    if not files:
        raise PacsUnavailable(f"{where}: study {study_uid}: no instances arrived")
    if completed is not None and len(files) < completed:
        raise PacsUnavailable(
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
