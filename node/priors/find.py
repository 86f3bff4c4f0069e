"""Ask the PACS for the patient's studies: QIDO-RS when it speaks DICOMweb, else C-FIND.

The query matches on PatientID only. IssuerOfPatientID is asked for as a return key
and compared by ``choose_prior`` instead of being a matching key, because DICOM
matching on a key excludes records where the PACS holds no issuer at all, and the
rule is "same issuer when both carry one".

Archives that don't support ModalitiesInStudy (DCMTK's dcmqrscp drops it) get one
series-level query per study without it, so the modality family can still be judged.
"""

from __future__ import annotations

import dataclasses
import logging

from dicomweb_client.api import DICOMwebClient
from pydicom import Dataset
from pydicom.tag import Tag
from pynetdicom import AE
from pynetdicom.association import Association
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    StudyRootQueryRetrieveInformationModelFind,
)
from pynetdicom.status import code_to_category

from node.config import PacsSettings
from node.priors.study import RETURN_KEYS, PriorStudy, PriorsUnavailable, require_context

__all__ = ["describe_pacs", "find_candidate_studies"]

log = logging.getLogger(__name__)

_PENDING = frozenset({0xFF00, 0xFF01})


def describe_pacs(pacs: PacsSettings, transport: str) -> str:
    """How errors name a PACS: its AE, address or URL, and the transport used."""
    if transport in ("QIDO-RS", "WADO-RS"):
        return f"PACS {pacs.ae_title} at {pacs.dicomweb_url} ({transport})"
    return f"PACS {pacs.ae_title} at {pacs.host}:{pacs.port} ({transport})"


def find_candidate_studies(
    current: Dataset, *, pacs: PacsSettings, calling_ae: str
) -> list[PriorStudy]:
    """Every study the PACS holds for the patient of ``current`` (the current one included).

    Raises
    ------
    ValueError
        ``current`` has no PatientID: there is nothing to match priors by.
    PriorsUnavailable
        The PACS is down, refused the association or request, or failed the query.
    """
    patient_id = str(current.get("PatientID", "") or "").strip()
    study_uid = str(current.get("StudyInstanceUID", "")).strip()
    if not patient_id:
        raise ValueError(f"study {study_uid} has no PatientID: priors can't be looked up")
    if pacs.dicomweb_url:
        found = _qido(patient_id, pacs=pacs)
        transport = "QIDO-RS"
    else:
        found = _c_find(patient_id, pacs=pacs, calling_ae=calling_ae)
        transport = "C-FIND"
    log.info(
        "%s: %d study(ies) for the patient of study %s",
        describe_pacs(pacs, transport),
        len(found),
        study_uid,
    )
    return found


def _query(patient_id: str) -> Dataset:
    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    for keyword in RETURN_KEYS:
        setattr(query, keyword, None)  # zero length: a return key, universal match
    query.PatientID = patient_id
    return query


def _c_find(patient_id: str, *, pacs: PacsSettings, calling_ae: str) -> list[PriorStudy]:
    where = describe_pacs(pacs, "C-FIND")
    ae = AE(ae_title=calling_ae)
    ae.acse_timeout = pacs.timeout_seconds
    ae.dimse_timeout = pacs.timeout_seconds
    ae.network_timeout = pacs.timeout_seconds
    ae.connection_timeout = min(pacs.timeout_seconds, 10.0)
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    assoc = ae.associate(pacs.host, pacs.port, ae_title=pacs.ae_title)
    if not assoc.is_established:
        raise PriorsUnavailable(f"{where}: association was not accepted")
    require_context(
        assoc, StudyRootQueryRetrieveInformationModelFind, where=where, service="Study Root C-FIND"
    )
    found: list[PriorStudy] = []
    try:
        responses = assoc.send_c_find(
            _query(patient_id), StudyRootQueryRetrieveInformationModelFind
        )
        for status, identifier in responses:
            if not status or "Status" not in status:
                raise PriorsUnavailable(f"{where}: no answer (connection lost or timed out)")
            code = int(status.Status)
            if code in _PENDING:
                if identifier is not None and identifier.get("StudyInstanceUID"):
                    found.append(PriorStudy.from_identifier(identifier))
            elif code_to_category(code) != "Success":
                raise PriorsUnavailable(f"{where}: C-FIND failed with status 0x{code:04X}")
        found = [
            study
            if study.modalities
            else dataclasses.replace(study, modalities=_series_modalities(assoc, study, where))
            for study in found
        ]
    finally:
        assoc.release()
    return found


def _series_modalities(assoc: Association, study: PriorStudy, where: str) -> tuple[str, ...]:
    query = Dataset()
    query.QueryRetrieveLevel = "SERIES"
    query.StudyInstanceUID = study.study_uid
    query.SeriesInstanceUID = None
    query.Modality = None
    modalities: set[str] = set()
    for status, identifier in assoc.send_c_find(query, StudyRootQueryRetrieveInformationModelFind):
        if not status or "Status" not in status:
            raise PriorsUnavailable(
                f"{where}: no answer to the series query of study {study.study_uid}"
            )
        if int(status.Status) in _PENDING and identifier is not None:
            value = str(identifier.get("Modality", "") or "").strip().upper()
            if value:
                modalities.add(value)
    return tuple(sorted(modalities))


def _qido(patient_id: str, *, pacs: PacsSettings) -> list[PriorStudy]:
    assert pacs.dicomweb_url is not None
    where = describe_pacs(pacs, "QIDO-RS")
    client = DICOMwebClient(url=pacs.dicomweb_url, timeout=pacs.timeout_seconds)
    client.set_http_retry_params(retry=False)
    try:
        answers = client.search_for_studies(
            search_filters={"PatientID": patient_id},
            fields=[k for k in RETURN_KEYS if k != "PatientID"],
            get_remaining=True,
        )
    except Exception as e:  # requests' connection and HTTP errors, whatever the transport
        raise PriorsUnavailable(f"{where}: {e}") from e
    found: list[PriorStudy] = []
    for answer in answers:
        try:
            identifier = Dataset.from_json(answer)
        except (ValueError, TypeError, KeyError) as e:
            raise PriorsUnavailable(f"{where}: an answer is not valid DICOM JSON: {e}") from e
        if identifier.get("StudyInstanceUID"):
            found.append(PriorStudy.from_identifier(identifier))
    return [
        study
        if study.modalities
        else dataclasses.replace(study, modalities=_qido_series_modalities(client, study, where))
        for study in found
    ]


def _qido_series_modalities(
    client: DICOMwebClient, study: PriorStudy, where: str
) -> tuple[str, ...]:
    modality_tag = f"{Tag('Modality'):08X}"
    try:
        series = client.search_for_series(study.study_uid, fields=["Modality"])
    except Exception as e:  # requests' connection and HTTP errors
        raise PriorsUnavailable(f"{where}: series query of study {study.study_uid}: {e}") from e
    values = {
        str(v).strip().upper()
        for answer in series
        for v in (answer.get(modality_tag, {}).get("Value") or [])
    }
    return tuple(sorted(v for v in values if v))
