"""SR content items the node's documents are built from.

One small function per content item or sub-tree, in the manner of highdicom's
``sr/content.py``, shared by the TID 1500 report, the lab-test groups and the
box tracking UIDs the report and the GSPS agree on. Pure: no I/O, no clocks.
"""

from __future__ import annotations

import logging
import uuid

import highdicom as hd
from highdicom.sr import AlgorithmIdentification

__all__ = [
    "algorithm_identification",
    "derived_uid",
    "device_observer_uid",
]

logger = logging.getLogger(__name__)

# Namespace for UIDs derived from names: the same model label always yields the
# same Device Observer UID, so a PACS can group documents by model.
_UID_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "urn:medgemma-node:dicom")


def derived_uid(*parts: str) -> hd.UID:
    """Return a deterministic ``2.25`` UID for ``parts``.

    Used where two objects or two runs must agree on a UID without sharing
    state (device observer UID, SR <-> GSPS tracking UIDs).
    """
    name = "\x1f".join(parts)
    return hd.UID.from_uuid(str(uuid.uuid5(_UID_NAMESPACE, name)))


def device_observer_uid(model_label: str) -> hd.UID:
    """Return the Device Observer UID that stands for ``model_label``."""
    return derived_uid("device-observer", model_label)


def algorithm_identification(
    model_label: str, software_version: str, task: str
) -> AlgorithmIdentification:
    """TID 4019 algorithm identification: which model, run how, for what task.

    The model weights carry no version of their own here, so the version is
    the node's: it fixes prompts and pre-processing, which shape the output.
    """
    return AlgorithmIdentification(
        name=model_label,
        version=software_version,
        parameters=[f"task={task}"],
    )
