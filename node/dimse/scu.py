"""The node as SCU: sending results (C-STORE) and asking the PACS about a study (C-FIND)."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from pydicom import Dataset
from pynetdicom import AE, StoragePresentationContexts
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    StudyRootQueryRetrieveInformationModelFind,
)
from pynetdicom.status import code_to_category

from node.config import PacsSettings

log = logging.getLogger(__name__)


class PacsUnavailable(Exception):
    """The PACS could not be reached or refused the association; the message names it."""


class DeliveryRefused(Exception):
    """The PACS answered a C-STORE with a failure status."""


def _describe(pacs: PacsSettings) -> str:
    return f"PACS {pacs.ae_title} at {pacs.host}:{pacs.port}"


def _client(calling_ae: str, pacs: PacsSettings) -> AE:
    ae = AE(ae_title=calling_ae)
    ae.acse_timeout = pacs.timeout_seconds
    ae.dimse_timeout = pacs.timeout_seconds
    ae.network_timeout = pacs.timeout_seconds
    ae.connection_timeout = min(pacs.timeout_seconds, 10.0)
    return ae


def store(datasets: Sequence[Dataset], *, pacs: PacsSettings, calling_ae: str) -> None:
    """C-STORE every data set to ``pacs``; raises unless all were stored."""
    ae = _client(calling_ae, pacs)
    sop_classes = {str(ds.SOPClassUID) for ds in datasets}
    for sop_class in sorted(sop_classes):
        ae.add_requested_context(sop_class)
    # Keep the common storage contexts too so a PACS that lacks one SOP class still associates.
    for context in StoragePresentationContexts[: 128 - len(sop_classes)]:
        if context.abstract_syntax is not None and context.abstract_syntax not in sop_classes:
            ae.add_requested_context(context.abstract_syntax)
    assoc = ae.associate(pacs.host, pacs.port, ae_title=pacs.ae_title)
    if not assoc.is_established:
        raise PacsUnavailable(f"{_describe(pacs)}: association was not accepted")
    try:
        for ds in datasets:
            status = assoc.send_c_store(ds)
            code = int(status.Status) if status and "Status" in status else None
            if code is None or code_to_category(code) not in ("Success", "Warning"):
                raise DeliveryRefused(
                    f"{_describe(pacs)} refused {ds.SOPInstanceUID} of study "
                    f"{ds.StudyInstanceUID}: status "
                    + (f"0x{code:04X}" if code is not None else "none (connection lost)")
                )
    finally:
        assoc.release()


def count_study_instances(study_uid: str, *, pacs: PacsSettings, calling_ae: str) -> int | None:
    """NumberOfStudyRelatedInstances from a Study Root C-FIND; None if the PACS doesn't know."""
    ae = _client(calling_ae, pacs)
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    assoc = ae.associate(pacs.host, pacs.port, ae_title=pacs.ae_title)
    if not assoc.is_established:
        raise PacsUnavailable(f"{_describe(pacs)}: association was not accepted")
    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    query.StudyInstanceUID = study_uid
    query.NumberOfStudyRelatedInstances = None
    count: int | None = None
    try:
        for status, identifier in assoc.send_c_find(
            query, StudyRootQueryRetrieveInformationModelFind
        ):
            if status and int(status.Status) in (0xFF00, 0xFF01) and identifier is not None:
                value = identifier.get("NumberOfStudyRelatedInstances")
                if value not in (None, ""):
                    count = int(value)
    finally:
        assoc.release()
    return count
