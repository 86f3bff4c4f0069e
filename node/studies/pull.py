"""Pulling a study from the PACS: look it up, fetch it, file it as received, route it at once.

Used by ``POST /api/studies/{uid}/process``, ``medgemma-node process`` and the watch.

The study is fetched with the priors' ``retrieve_study`` (WADO-RS, C-GET or C-MOVE) into
the prior cache's directory for the study: with C-MOVE the PACS sends the instances to
the node's own SCP, which files any C-STORE naming the node as move originator into
that directory, in whichever process serves DICOM. From there every instance goes
through ``Ingest`` with the PACS's AE as calling AE, as if the PACS had pushed it: the
spool, the index, late-arrival handling and routing work unchanged. The directory is
removed afterwards (kept only if it already held a complete prior before the pull), and
on any failure, so no staged file outlives the pull. (A worker fetching the same study as a
prior at that very moment shares the directory; its retrieval may then fail, and its job
reports without a prior, saying why.)

All the PACS has is then here, so the study need not wait ``node.stable_seconds``: the
pull records the PACS's count as the study's expected instances, and the completeness
watcher of the serving node routes it on its next pass (every 0.5 s), as it routes a
pushed study once the PACS's count is reached. One routing path: routing from here
instead would race the watcher from the command line's process, and SQLite has no row
lock to settle that race. The pull waits a little for the jobs, to name them.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

import pydicom.config
from pydicom import Dataset
from pydicom.uid import UID
from sqlalchemy import func, select

from node.audit import AuditEvent, AuditLog, AuditValue
from node.config import PacsSettings, Settings
from node.dicomweb import qido
from node.dimse.association import associate
from node.errors import reraised_as
from node.pacs_errors import PacsUnavailable, describe_pacs
from node.priors.cache import PriorCache
from node.priors.retrieve import retrieve_study
from node.store.index import Filed, Index
from node.store.ingest import Ingest
from node.store.models import Instance, JobState, Series, Study, StudyState
from node.store.outcome import Refused
from node.store.spool import Spool

__all__ = [
    "InvalidStudyUid",
    "NothingFiled",
    "PullError",
    "PullMethod",
    "PullOutcome",
    "PullUnavailable",
    "PullVia",
    "StudyAtPacs",
    "StudyNotAtPacs",
    "StudyPuller",
    "held_instances",
    "pull_method",
    "pull_once",
    "search_instances",
    "search_studies",
]

log = logging.getLogger(__name__)

PullMethod = Literal["wado", "c-get", "c-move"]
PullVia = Literal["http", "cli", "watch"]

# How long a pull waits for the completeness watcher (a pass every 0.5 s) to route the
# study, so that it can name the jobs.
ROUTING_WAIT_SECONDS = 5.0


class PullError(Exception):
    """A pull that didn't happen or didn't finish; the message names the study (and PACS)."""


class InvalidStudyUid(PullError, ValueError):
    """What was asked for is not a UID (a wildcard would match other studies at the PACS)."""


class StudyNotAtPacs(PullError, LookupError):
    """The PACS answered, and has no such study."""


class PullUnavailable(PullError):
    """The PACS could not be asked, refused, or didn't deliver in time, or the node could
    not file what came; nothing staged is left behind, and what was filed stays filed."""


class NothingFiled(PullError):
    """The PACS delivered the study, but not one instance of it could be filed."""


@dataclass(frozen=True)
class StudyAtPacs:
    """A study-level answer: the study, and NumberOfStudyRelatedInstances when given."""

    study_uid: str
    instances: int | None


@dataclass(frozen=True)
class PullOutcome:
    study_uid: str
    method: PullMethod
    instances: int  # what the PACS delivered
    new_instances: int  # of those, the ones the node didn't hold
    state: str  # the study's: routed, skipped, or receiving (not yet routed by the node)
    job_ids: list[int] = field(default_factory=list)  # the study's jobs that stand
    refused: int = 0  # delivered instances that can't be filed (each logged)

    def as_json(self) -> dict[str, Any]:
        return {
            "study_instance_uid": self.study_uid,
            "jobs": self.job_ids,
            "instances": self.instances,
            "new_instances": self.new_instances,
            "refused_instances": self.refused,
            "method": self.method,
            "state": self.state,
        }


def pull_method(pacs: PacsSettings) -> PullMethod:
    """``pacs.retrieve`` with ``auto`` decided: WADO-RS with a DICOMweb URL, else C-MOVE."""
    if pacs.retrieve != "auto":
        return pacs.retrieve
    return "wado" if pacs.dicomweb_url else "c-move"


# -- asking the PACS ---------------------------------------------------------------------


def search_studies(
    pacs: PacsSettings, calling_ae: str, filters: Mapping[str, str]
) -> list[StudyAtPacs]:
    """Study-level search (QIDO-RS with a DICOMweb URL, else Study Root C-FIND) on
    ``filters`` (keyword: DICOM matching value); PullUnavailable when the PACS can't answer."""
    with reraised_as(PacsUnavailable, PullUnavailable):
        if pacs.dicomweb_url:
            fields = ["NumberOfStudyRelatedInstances"]
            answers = qido.search(pacs, "studies", filters=filters, fields=fields)
            return [
                StudyAtPacs(uid, _count(qido.json_text(answer, "NumberOfStudyRelatedInstances")))
                for uid, answer in answers.items()
            ]
        query = Dataset()
        query.QueryRetrieveLevel = "STUDY"
        query.StudyInstanceUID = ""
        query.NumberOfStudyRelatedInstances = None
        for keyword, value in filters.items():
            setattr(query, keyword, value)
        with associate(pacs, calling_ae, "C-FIND") as peer:
            identifiers = peer.find(query)
    return [
        StudyAtPacs(uid, _count(identifier.get("NumberOfStudyRelatedInstances")))
        for identifier in identifiers
        if (uid := _text(identifier, "StudyInstanceUID"))
    ]


def search_instances(pacs: PacsSettings, calling_ae: str, study_uid: str) -> set[str]:
    """The SOP Instance UIDs the PACS holds for ``study_uid``. C-FIND asks series by series,
    as a hierarchical query must; PullUnavailable when the PACS can't answer."""
    with reraised_as(PacsUnavailable, PullUnavailable):
        if pacs.dicomweb_url:
            return set(
                qido.search(pacs, "instances", study_uid=study_uid, fields=["SOPInstanceUID"])
            )
        with associate(pacs, calling_ae, "C-FIND", study_uid=study_uid) as peer:
            series_query = Dataset()
            series_query.QueryRetrieveLevel = "SERIES"
            series_query.StudyInstanceUID = study_uid
            series_query.SeriesInstanceUID = ""
            series_uids = {_text(i, "SeriesInstanceUID") for i in peer.find(series_query)}
            found: set[str] = set()
            for series_uid in sorted(filter(None, series_uids)):
                query = Dataset()
                query.QueryRetrieveLevel = "IMAGE"
                query.StudyInstanceUID = study_uid
                query.SeriesInstanceUID = series_uid
                query.SOPInstanceUID = ""
                found.update(_text(identifier, "SOPInstanceUID") for identifier in peer.find(query))
    found.discard("")
    return found


def _text(identifier: Dataset, keyword: str) -> str:
    return str(identifier.get(keyword, "") or "").strip()


def _count(value: object) -> int | None:
    text = "" if value is None else str(value).strip()
    return int(text) if text.isdigit() else None


# -- what the node holds -----------------------------------------------------------------


def held_instances(index: Index, study_uid: str) -> int | None:
    """How many instances the node holds of ``study_uid``; None when it has no such study."""
    with index.session() as s:
        study_id = s.scalar(select(Study.id).where(Study.study_uid == study_uid))
        if study_id is None:
            return None
        count = s.scalar(
            select(func.count(Instance.id))
            .join(Series, Instance.series_id == Series.id)
            .where(Series.study_id == study_id)
        )
        return int(count or 0)


def _study_row(index: Index, study_uid: str) -> Study | None:
    with index.session() as s:
        return s.scalar(select(Study).where(Study.study_uid == study_uid))


# -- the pull ----------------------------------------------------------------------------


class StudyPuller:
    """Pulls studies from ``settings.pacs`` into the node; one pull per study at a time."""

    def __init__(self, settings: Settings, ingest: Ingest, audit: AuditLog) -> None:
        if settings.pacs is None:
            raise ValueError("pulling studies needs a pacs section in the configuration")
        self.settings = settings
        self.pacs: PacsSettings = settings.pacs
        self.ingest = ingest
        self.index = ingest.index
        self.audit = audit
        self.method = pull_method(self.pacs)
        # The C-MOVE landing place the SCP knows (see the module docstring).
        self.staging = PriorCache(settings.node.data_dir / "priors")
        self._busy: set[str] = set()
        self._busy_changed = threading.Condition()

    def pull(self, study_uid: str, *, via: PullVia, peer_address: str | None = None) -> PullOutcome:
        """Fetch ``study_uid`` from the PACS, file it, route it; every outcome is audited.

        Raises InvalidStudyUid, StudyNotAtPacs, PullUnavailable or NothingFiled.
        """
        study_uid = study_uid.strip()
        # Checked here, quietly: pydicom would log its own warning for the bad value.
        if not UID(study_uid, validation_mode=pydicom.config.IGNORE).is_valid:
            raise InvalidStudyUid(f"{study_uid!r} is not a valid Study Instance UID")
        with self._one_pull_of(study_uid):
            try:
                outcome = self._pull(study_uid)
            except PullError as e:
                result = "not-found" if isinstance(e, StudyNotAtPacs) else "failed"
                self._record(via, peer_address, study_uid=study_uid, outcome=result, error=str(e))
                raise
        self._record(
            via,
            peer_address,
            study_uid=study_uid,
            outcome="ok",
            instances=outcome.instances,
            new_instances=outcome.new_instances,
            refused_instances=outcome.refused,
            state=outcome.state,
            job_ids=outcome.job_ids,
        )
        return outcome

    @contextmanager
    def _one_pull_of(self, study_uid: str) -> Iterator[None]:
        # The HTTP route and the watch share this puller: a second pull of the same
        # study waits for the first (and then finds everything a duplicate).
        with self._busy_changed:
            while study_uid in self._busy:
                self._busy_changed.wait()
            self._busy.add(study_uid)
        try:
            yield
        finally:
            with self._busy_changed:
                self._busy.discard(study_uid)
                self._busy_changed.notify_all()

    def _record(self, via: PullVia, peer_address: str | None, **fields: AuditValue) -> None:
        fields.update(pacs=self.pacs.ae_title, method=self.method, via=via)
        if peer_address is not None:
            fields["peer_address"] = peer_address
        if via == "cli":
            self.audit.record_cli(AuditEvent.STUDY_PULLED, **fields)
        else:
            self.audit.record(AuditEvent.STUDY_PULLED, **fields)

    def _pull(self, study_uid: str) -> PullOutcome:
        node_ae = self.settings.node.ae_title
        try:
            answers = search_studies(self.pacs, node_ae, {"StudyInstanceUID": study_uid})
        except PullUnavailable as e:
            raise PullUnavailable(f"study {study_uid} not looked up: {e}") from e
        at_pacs = next((a for a in answers if a.study_uid == study_uid), None)
        if at_pacs is None:
            where = describe_pacs(self.pacs, "QIDO-RS" if self.pacs.dicomweb_url else "C-FIND")
            raise StudyNotAtPacs(f"{where} has no study {study_uid}")
        filed = self._fetch_and_file(study_uid)
        new, refused, delivered = filed
        study = _study_row(self.index, study_uid)
        if study is None:
            raise NothingFiled(
                f"study {study_uid}: the PACS delivered {delivered} instance(s), "
                "none could be filed (see the log)"
            )
        state = self._await_routing(study, at_pacs.instances or delivered)
        job_ids = [j.id for j in self.index.jobs(study_uid) if j.state != JobState.SUPERSEDED]
        log.info(
            "pulled study %s from PACS %s by %s: %d instance(s), %d new%s; study %s, job(s) %s",
            study_uid,
            self.pacs.ae_title,
            self.method,
            delivered,
            new,
            f", {refused} refused" if refused else "",
            state,
            job_ids or "none",
        )
        return PullOutcome(study_uid, self.method, delivered, new, state, job_ids, refused)

    def _fetch_and_file(self, study_uid: str) -> tuple[int, int, int]:
        """(new, refused, delivered) instances; the staging directory is gone afterwards
        unless it held a complete prior before."""
        kept_prior = self.staging.is_complete(study_uid)
        directory = self.staging.prepare(study_uid)
        try:
            with reraised_as(PacsUnavailable, PullUnavailable):
                files = retrieve_study(
                    study_uid,
                    pacs=self.pacs,
                    calling_ae=self.settings.node.ae_title,
                    dest=directory,
                    method=self.method,
                    timeout=self.pacs.retrieve_timeout_seconds,
                    move_destination=self.settings.node.ae_title,
                )
            new = refused = 0
            for path in files:
                outcome = self.ingest.accept(path.read_bytes(), calling_ae=self.pacs.ae_title)
                if isinstance(outcome, Refused):
                    if outcome.retry_later:
                        raise PullUnavailable(
                            f"study {study_uid}: the node can't file it: {outcome.message}"
                        ) from outcome.error
                    # The file's name is a hash; the study and the reason say enough.
                    log.error(
                        "an instance of study %s from PACS %s can't be filed: %s",
                        study_uid,
                        self.pacs.ae_title,
                        outcome.message,
                    )
                    refused += 1
                    continue
                new += outcome.filed == Filed.NEW
            return new, refused, len(files)
        finally:
            if not kept_prior:
                self.staging.discard(study_uid)

    def _await_routing(self, study: Study, expected: int) -> str:
        """Hand a receiving study to the completeness watcher as complete; its state once
        routed, or still ``receiving`` after ``ROUTING_WAIT_SECONDS`` (no node serving)."""
        if study.state != StudyState.RECEIVING:
            return study.state  # nothing new, or late arrivals ignored: nothing to route
        self.index.set_expected(study.id, expected)
        deadline = time.monotonic() + ROUTING_WAIT_SECONDS
        while time.monotonic() < deadline:
            state = self.index.study(study.id).state
            if state != StudyState.RECEIVING:
                return state
            time.sleep(0.1)
        log.info(
            "study %s: pulled and complete, not routed yet: the serving node's completeness "
            "watcher routes it (is medgemma-node serve running on this index?)",
            study.study_uid,
        )
        return StudyState.RECEIVING


def pull_once(settings: Settings, study_uid: str, *, via: PullVia = "cli") -> PullOutcome:
    """One pull with the node's spool and index opened for it (the command line)."""
    index = Index(settings.node.resolved_database_url)
    try:
        ingest = Ingest(
            Spool(settings.node.data_dir / "spool"),
            index,
            reopen_on_late=settings.node.late_arrivals == "rerun",
        )
        puller = StudyPuller(settings, ingest, AuditLog.from_settings(settings.node))
        return puller.pull(study_uid, via=via)
    finally:
        index.close()
