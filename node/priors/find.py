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
from collections.abc import Callable, Iterable

from pydicom import Dataset

from node.config import PacsSettings
from node.dicomweb import qido
from node.dimse.association import PacsAssociation, associate
from node.pacs_errors import PacsUnavailable, describe_pacs
from node.priors.study import RETURN_KEYS, PriorStudy

__all__ = ["find_candidate_studies"]

log = logging.getLogger(__name__)


def find_candidate_studies(
    current: Dataset, *, pacs: PacsSettings, calling_ae: str
) -> list[PriorStudy]:
    """Every study the PACS holds for the patient of ``current`` (the current one included).

    Raises
    ------
    ValueError
        ``current`` has no PatientID: there is nothing to match priors by.
    PacsUnavailable (PriorsUnavailable is its name in node.priors)
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
    with associate(pacs, calling_ae, "C-FIND") as peer:
        found = [
            PriorStudy.from_identifier(identifier)
            for identifier in peer.find(_query(patient_id))
            if identifier.get("StudyInstanceUID")
        ]
        return _with_modalities(found, lambda study: _series_modalities(peer, study))


def _series_modalities(peer: PacsAssociation, study: PriorStudy) -> tuple[str, ...]:
    query = Dataset()
    query.QueryRetrieveLevel = "SERIES"
    query.StudyInstanceUID = study.study_uid
    query.SeriesInstanceUID = None
    query.Modality = None
    return _modalities(str(identifier.get("Modality", "") or "") for identifier in peer.find(query))


def _qido(patient_id: str, *, pacs: PacsSettings) -> list[PriorStudy]:
    answers = qido.search(
        pacs,
        "studies",
        filters={"PatientID": patient_id},
        fields=[k for k in RETURN_KEYS if k != "PatientID"],
    )
    found: list[PriorStudy] = []
    for answer in answers.values():
        try:
            found.append(PriorStudy.from_identifier(Dataset.from_json(answer)))
        except (ValueError, TypeError, KeyError) as e:
            raise PacsUnavailable(
                f"{describe_pacs(pacs, 'QIDO-RS')}: an answer is not valid DICOM JSON: {e}"
            ) from e
    return _with_modalities(found, lambda study: _qido_series_modalities(pacs, study))


def _qido_series_modalities(pacs: PacsSettings, study: PriorStudy) -> tuple[str, ...]:
    series = qido.search(
        pacs,
        "series",
        study_uid=study.study_uid,
        fields=["Modality"],
        about=f"series query of study {study.study_uid}",
    )
    return _modalities(qido.json_text(answer, "Modality") for answer in series.values())


def _with_modalities(
    studies: list[PriorStudy], series_modalities: Callable[[PriorStudy], tuple[str, ...]]
) -> list[PriorStudy]:
    """The studies, those whose answer lacked ModalitiesInStudy with ``series_modalities``."""
    return [
        study
        if study.modalities
        else dataclasses.replace(study, modalities=series_modalities(study))
        for study in studies
    ]


def _modalities(values: Iterable[str]) -> tuple[str, ...]:
    return tuple(sorted({value.strip().upper() for value in values if value.strip()}))
