"""The node as SCU: sending results (C-STORE) and asking the PACS how large a study is (C-FIND).

Both go through ``association.associate``, which checks the accepted contexts and the
statuses; the errors they raise are ``node.pacs_errors``'.
"""

from __future__ import annotations

from collections.abc import Sequence

from pydicom import Dataset

from node.config import PacsSettings
from node.dimse.association import associate

__all__ = ["count_study_instances", "store"]


def store(datasets: Sequence[Dataset], *, pacs: PacsSettings, calling_ae: str) -> None:
    """C-STORE every data set to ``pacs`` on one association; raises unless all were stored.

    Raises
    ------
    PacsUnavailable
        No association.
    DeliveryRefused
        The PACS doesn't accept an instance's SOP class, or answered a failure status.
    """
    sop_classes = [str(ds.SOPClassUID) for ds in datasets]
    with associate(pacs, calling_ae, "C-STORE", storage_classes=sop_classes) as peer:
        for ds in datasets:
            peer.store(ds)


def count_study_instances(study_uid: str, *, pacs: PacsSettings, calling_ae: str) -> int | None:
    """NumberOfStudyRelatedInstances from a Study Root C-FIND; None if the PACS doesn't
    know the study or doesn't count it. PacsUnavailable when the PACS can't answer."""
    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    query.StudyInstanceUID = study_uid
    query.NumberOfStudyRelatedInstances = None
    with associate(pacs, calling_ae, "C-FIND", study_uid=study_uid) as peer:
        answers = peer.find(query)
    counts = [str(a.get("NumberOfStudyRelatedInstances", "") or "").strip() for a in answers]
    return next((int(c) for c in counts if c.isdigit()), None)
