"""The audit trail: one JSON object per line, appended, for who sent what and where it went.

Every process of the node (the receiver and each worker) and the command line append to
the same file. Each event opens the file with ``O_APPEND``, takes an exclusive ``flock``,
stamps the time and writes its line with one ``os.write``, so lines never interleave and
the file is in time order. There is no buffer in between: a line is in the kernel when
``record`` returns, and survives the process dying. It is not fsynced (a power cut may
lose the last seconds): events come per association and per job, and an fsync on the
association path would make every sender wait on the disk. Opening per event also lets
logrotate move the file away without ``copytruncate``.

Records name UIDs, AE titles and addresses, never patient names or IDs, unless
``node.log_phi`` is true. Writing an event never raises: an audit trail that can't be
written is logged as an error and the work goes on.
"""

from __future__ import annotations

import fcntl
import getpass
import json
import logging
import os
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path

from node.config import NodeSettings

log = logging.getLogger(__name__)


class AuditEvent(StrEnum):
    """What a line records; the ``event`` field of each line."""

    ASSOCIATION_ACCEPTED = "association-accepted"
    ASSOCIATION_REFUSED = "association-refused"
    # Per association and study: what a sender delivered (DICOM's "instances transferred").
    STUDY_RECEIVED = "study-received"
    MODEL_RUN = "model-run"
    RESULTS_SENT = "results-sent"
    DELIVERY_FAILED = "delivery-failed"
    DEAD_LETTERED = "dead-lettered"
    RETRY_REQUESTED = "retry-requested"
    REPROCESS_REQUESTED = "reprocess-requested"
    # A study fetched from the PACS (process command, HTTP or the watch), failures too.
    STUDY_PULLED = "study-pulled"
    # DICOMweb clients reading what the node holds: a QIDO-RS search (its level, the
    # parameters with patient values withheld unless log_phi, how many matched) and a
    # WADO-RS retrieve (which UIDs, what: instances, metadata, frames, bulkdata,
    # rendered or thumbnail, how many instances).
    DICOMWEB_QUERY = "dicomweb-query"
    DICOMWEB_RETRIEVE = "dicomweb-retrieve"


class RunOutcome(StrEnum):
    """The ``outcome`` of a ``model-run`` event."""

    OK = "ok"
    FAILED = "failed"  # input that can never work: the job failed
    ERROR = "error"  # an error: tried again after node.retry_seconds, up to node.max_attempts


AuditValue = str | int | float | bool | None | list[str] | list[int]


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # a container user without a passwd entry
        return str(os.getuid())


class AuditLog:
    """Appends events to ``path``; with ``path`` None every event is dropped (audit disabled)."""

    def __init__(self, path: Path | None, *, log_phi: bool = False) -> None:
        self.path = path
        self.log_phi = log_phi

    @classmethod
    def from_settings(cls, node: NodeSettings) -> AuditLog:
        return cls(node.resolved_audit_log, log_phi=node.log_phi)

    @property
    def enabled(self) -> bool:
        return self.path is not None

    def record(self, event: AuditEvent, **fields: AuditValue) -> None:
        """Append one event. Fields are UIDs, AE titles, addresses, counts: no patient data."""
        if self.path is None:
            return
        try:
            self._append(event, fields)
        except Exception:
            log.exception("audit trail %s: %s event not written", self.path, event.value)

    def record_cli(self, event: AuditEvent, **fields: AuditValue) -> None:
        """An event an administrator asked for on the command line; names the OS user."""
        self.record(event, user=_user(), **fields)

    def _append(self, event: AuditEvent, fields: dict[str, AuditValue]) -> None:
        assert self.path is not None
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
        try:
            # Held while the time is taken and the line written: the file stays in time order
            # across processes.
            fcntl.flock(fd, fcntl.LOCK_EX)
            time = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
            line = json.dumps(
                {"time": time, "event": event.value, **fields},
                ensure_ascii=False,
                separators=(",", ":"),
            )
            data = (line + "\n").encode("utf-8")
            written = os.write(fd, data)
            if written != len(data):
                raise OSError(f"short write: {written} of {len(data)} bytes")
        finally:
            os.close(fd)  # releases the lock
