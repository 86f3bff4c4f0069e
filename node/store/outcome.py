"""What became of one received instance, and what every way of receiving makes of it.

:class:`node.store.ingest.Ingest` (and the receiver of C-MOVE'd instances the service
plugs into the SCP) answer with an :data:`IngestOutcome`: :class:`Stored` (new or a
duplicate) or :class:`Refused` with a :class:`Refusal` reason. Each reason's DIMSE status,
metrics reason and log wording are in ``_RULES`` below, the one table of them; the C-STORE
SCP (``node/dimse/scp.py``) and STOW-RS (``node/http/stow.py``) only put the outcome into
their wire form: the C-STORE response status, or the STOW-RS FailureReason (the same codes,
PS3.18 10.5.3) and HTTP status.

====================  ======  ==================  ==========================================
reason                status  metrics reason      log line
====================  ======  ==================  ==========================================
not-dicom             0xC000  unreadable          ``<where> refused: <message>``
invalid               0xA900  invalid             ``<where> refused: <message>``
wrong-study           0xA900  invalid             ``<where> refused: <message>``
not-filed             0xA700  not-filed           ``<where> not filed: <message>``
failed                0xA700  not-filed           ``<where> could not be filed`` + traceback
prior-not-waiting     0xA900  prior-not-waiting   ``refused <where>: <message>`` (warning)
====================  ======  ==================  ==========================================

:class:`ReceivedStudies` counts what one association or STOW-RS request delivered, for
its one ``study-received`` audit event per study.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from enum import StrEnum

from node import metrics
from node.audit import AuditEvent, AuditLog, AuditValue
from node.store.index import Filed
from node.store.meta import InstanceMeta

__all__ = [
    "CANNOT_UNDERSTAND",
    "DATASET_DOES_NOT_MATCH_SOP_CLASS",
    "OUT_OF_RESOURCES",
    "SUCCESS",
    "IngestOutcome",
    "ReceivedStudies",
    "Refusal",
    "Refused",
    "Stored",
]

# Storage service statuses (PS3.4 Annex B.2.3); STOW-RS failure reasons use them too.
SUCCESS = 0x0000
OUT_OF_RESOURCES = 0xA700
DATASET_DOES_NOT_MATCH_SOP_CLASS = 0xA900
CANNOT_UNDERSTAND = 0xC000


class Refusal(StrEnum):
    NOT_DICOM = "not-dicom"  # not a readable DICOM data set (or a STOW-RS part of another type)
    INVALID = "invalid"  # readable, but a UID the index needs is missing or malformed
    WRONG_STUDY = "wrong-study"  # STOW-RS to a study's URL, of an instance in another study
    NOT_FILED = "not-filed"  # the spool or the index can't take it now: the sender retries
    FAILED = "failed"  # an error nobody foresaw while filing it: the sender retries
    PRIOR_NOT_WAITING = "prior-not-waiting"  # C-MOVE'd to us, but no retrieval waits for it


@dataclass(frozen=True)
class _Rule:
    status: int  # the C-STORE status, and the STOW-RS FailureReason
    metric: str  # medgemma_instances_refused_total{reason=…}
    line: str  # the log line, from {where} (who sent what) and {message}
    level: int = logging.ERROR


_REFUSED = "{where} refused: {message}"

_RULES = {
    Refusal.NOT_DICOM: _Rule(CANNOT_UNDERSTAND, "unreadable", _REFUSED),
    Refusal.INVALID: _Rule(DATASET_DOES_NOT_MATCH_SOP_CLASS, "invalid", _REFUSED),
    Refusal.WRONG_STUDY: _Rule(DATASET_DOES_NOT_MATCH_SOP_CLASS, "invalid", _REFUSED),
    Refusal.NOT_FILED: _Rule(OUT_OF_RESOURCES, "not-filed", "{where} not filed: {message}"),
    # The message is in the traceback that follows the line.
    Refusal.FAILED: _Rule(OUT_OF_RESOURCES, "not-filed", "{where} could not be filed"),
    # A late or unasked-for delivery, not a broken one: a warning.
    Refusal.PRIOR_NOT_WAITING: _Rule(
        DATASET_DOES_NOT_MATCH_SOP_CLASS,
        "prior-not-waiting",
        "refused {where}: {message}",
        logging.WARNING,
    ),
}


@dataclass(frozen=True)
class Stored:
    """An instance that is on disk: ``filed`` says whether it is new or a duplicate."""

    sop_class_uid: str
    sop_instance_uid: str
    study_uid: str
    filed: Filed
    patient_id: str | None = None  # audited only with node.log_phi

    @classmethod
    def of(cls, meta: InstanceMeta, filed: Filed) -> Stored:
        return cls(meta.sop_class_uid, meta.sop_uid, meta.study_uid, filed, meta.patient_id)


@dataclass(frozen=True)
class Refused:
    """An instance that was not kept; nothing of it is left behind.

    The UIDs are whatever could be read of it (bytes that aren't DICOM have none); ``error``
    is the unforeseen exception of a ``failed`` one, logged with its traceback.
    """

    reason: Refusal
    message: str
    sop_class_uid: str | None = None
    sop_instance_uid: str | None = None
    error: BaseException | None = None

    @property
    def status(self) -> int:
        """The C-STORE status, also the STOW-RS FailureReason."""
        return _RULES[self.reason].status

    @property
    def retry_later(self) -> bool:
        """The node, not the instance, is at fault: the sender should send it again later."""
        return self.status == OUT_OF_RESOURCES

    def report(self, logger: logging.Logger, where: str) -> None:
        """Log the refusal once, on the transport's ``logger``, and count it by reason.

        ``where`` names the transport, the sender and what it sent, for example
        ``C-STORE of 1.2.3 from CT1 at 10.0.0.7``.
        """
        rule = _RULES[self.reason]
        logger.log(
            rule.level, rule.line.format(where=where, message=self.message), exc_info=self.error
        )
        metrics.instance_refused(rule.metric)


IngestOutcome = Stored | Refused


@dataclass
class _Delivered:
    instances: int = 0
    patient_id: str | None = None  # audited only with node.log_phi


class ReceivedStudies:
    """What one association or STOW-RS request delivered, study by study.

    Audited as DICOM audits "instances transferred": one ``study-received`` event per study
    (and per prior or not), when the association closes or the request ends.
    """

    def __init__(self) -> None:
        self._studies: dict[tuple[str, bool], _Delivered] = {}

    def add(self, stored: Stored, *, prior: bool = False) -> None:
        delivered = self._studies.setdefault((stored.study_uid, prior), _Delivered())
        delivered.instances += 1
        delivered.patient_id = delivered.patient_id or stored.patient_id

    def record(self, audit: AuditLog, **where: AuditValue) -> None:
        """One event per study; ``where`` says how and from whom it came."""
        for (study_uid, prior), delivered in self._studies.items():
            phi = {"patient_id": delivered.patient_id} if audit.log_phi else {}
            audit.record(
                AuditEvent.STUDY_RECEIVED,
                study_uid=study_uid,
                instances=delivered.instances,
                prior=prior,
                **where,
                **phi,
            )
