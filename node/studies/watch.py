"""Watch mode: for archives that can't push, ask the PACS for recent studies and pull them.

Every ``pacs.watch.interval_seconds`` the PACS is asked (QIDO-RS with a DICOMweb URL,
else a Study Root C-FIND) for the studies whose StudyDate lies within the last
``lookback_days``, one query per watched modality. A study the index has no row for is
pulled (``node.studies.pull``). A study the node holds is pulled again only when the PACS
counts more instances (NumberOfStudyRelatedInstances) than the node holds, and an
instance-level query shows one the node neither holds nor made: the node's own SRs and
presentation states, sent to the PACS, raise its count without being new work.

The index is the memory: after a restart a study held with the PACS's count is left
alone. A poll whose query or pulls fail waits twice as long before the next one, up to
``MAX_BACKOFF_SECONDS``; the first failure of an outage is logged, and the first full
poll after it, never the polls in between. While the outage lasts, a poll over DIMSE first
tries a plain TCP connection, so pynetdicom's own error lines come once per outage too.
"""

from __future__ import annotations

import logging
import socket
import threading
from datetime import date, timedelta
from pathlib import Path

from pydicom import dcmread
from pydicom.errors import InvalidDicomError
from pydicom.tag import Tag
from sqlalchemy import select

from node.backoff import doubling_wait
from node.config import PacsSettings, Settings, WatchSettings
from node.store.index import Index
from node.store.models import Instance, Series, Study
from node.studies.pull import (
    PullError,
    StudyAtPacs,
    StudyNotAtPacs,
    StudyPuller,
    held_instances,
    search_instances,
    search_studies,
)

__all__ = ["MAX_BACKOFF_SECONDS", "PullWatch", "watched_modalities"]

log = logging.getLogger(__name__)

_SOP_UID = Tag("SOPInstanceUID")

# The longest wait between two polls of a PACS that keeps failing.
MAX_BACKOFF_SECONDS = 600.0


def watched_modalities(settings: Settings) -> list[str]:
    """``pacs.watch.modalities``, or those the routing rules name; empty: every study."""
    assert settings.pacs is not None
    chosen = settings.pacs.watch.modalities
    if chosen is not None:
        return sorted(set(chosen))
    named = {m.strip().upper() for rule in settings.routing for m in rule.match.modality or []}
    return sorted(m for m in named if m)


class PullWatch:
    """Polls the PACS and pulls what the node lacks; ``run`` is the thread's loop."""

    def __init__(self, settings: Settings, puller: StudyPuller) -> None:
        assert settings.pacs is not None
        self.pacs: PacsSettings = settings.pacs
        self.watch: WatchSettings = settings.pacs.watch
        self.calling_ae = settings.node.ae_title
        self.puller = puller
        self.index: Index = puller.index
        self.modalities = watched_modalities(settings)
        self._failed_polls = 0
        # The PACS's count of each study when it was last pulled or found to hold nothing
        # new: looked at again only once the count grows past it. Kept while the PACS
        # lists the study, so it can't grow without bound.
        self._settled: dict[str, int] = {}

    def run(self, stop: threading.Event) -> None:
        log.info(
            "watching PACS %s every %g s for studies of the last %d day(s) (%s)",
            self.pacs.ae_title,
            self.watch.interval_seconds,
            self.watch.lookback_days,
            "modalities " + ", ".join(self.modalities) if self.modalities else "any modality",
        )
        while not stop.is_set():
            try:
                delay = self.poll()
            except Exception:
                log.exception("watch: a poll of PACS %s failed; trying again", self.pacs.ae_title)
                delay = self.watch.interval_seconds
            stop.wait(delay)

    def poll(self) -> float:
        """One round: ask, pull what is missing; returns the seconds until the next round."""
        if self._failed_polls and not self._port_open():
            return self._failed("still unreachable")
        try:
            studies = self._recent_studies()
        except PullError as e:
            return self._failed(str(e))
        failures: list[str] = []
        for study in studies:
            try:
                if not self._wanted(study):
                    continue
                self.puller.pull(study.study_uid, via="watch")
            except StudyNotAtPacs as e:
                log.info("watch: %s (removed from the PACS since it was listed?)", e)
                continue
            except PullError as e:
                failures.append(str(e))
                continue
            if study.instances is not None:
                self._settled[study.study_uid] = study.instances
        listed = {study.study_uid for study in studies}
        self._settled = {uid: n for uid, n in self._settled.items() if uid in listed}
        if failures:
            return self._failed(f"{len(failures)} pull(s) failed; the first: {failures[0]}")
        return self._succeeded()

    def _port_open(self) -> bool:
        """During an outage, whether the PACS's DICOM port takes a connection at all.

        pynetdicom logs every association that can't connect as errors of its own; a TCP
        connect first keeps the polls of an outage out of the log. QIDO-RS needs no probe.
        """
        if self.pacs.dicomweb_url:
            return True
        timeout = min(self.pacs.timeout_seconds, 10.0)
        try:
            with socket.create_connection((self.pacs.host, self.pacs.port), timeout=timeout):
                return True
        except OSError:
            return False

    def _recent_studies(self) -> list[StudyAtPacs]:
        # StudyDate is the PACS's local date, as is ours (the same site).
        first = date.today() - timedelta(days=self.watch.lookback_days)
        # Open-ended: a study dated later than our today (a clock ahead) is still found.
        dates = f"{first:%Y%m%d}-"
        filters = [{"StudyDate": dates, "ModalitiesInStudy": m} for m in self.modalities] or [
            {"StudyDate": dates}
        ]
        found: dict[str, StudyAtPacs] = {}
        for query in filters:
            for study in search_studies(self.pacs, self.calling_ae, query):
                found.setdefault(study.study_uid, study)
        return list(found.values())

    def _wanted(self, study: StudyAtPacs) -> bool:
        held = held_instances(self.index, study.study_uid)
        if held is None:
            return True
        if study.instances is None or study.instances <= held:
            return False
        if study.instances <= self._settled.get(study.study_uid, -1):
            return False
        at_pacs = search_instances(self.pacs, self.calling_ae, study.study_uid)
        missing = at_pacs - self._known_instances(study.study_uid)
        if not missing:
            self._settled[study.study_uid] = study.instances
            return False
        log.info(
            "watch: PACS %s has %d instance(s) of study %s the node lacks; pulling it again",
            self.pacs.ae_title,
            len(missing),
            study.study_uid,
        )
        return True

    def _known_instances(self, study_uid: str) -> set[str]:
        """SOP Instance UIDs the node holds of the study, and those of the results it made."""
        with self.index.session() as s:
            known = set(
                s.scalars(
                    select(Instance.sop_uid)
                    .join(Series, Instance.series_id == Series.id)
                    .join(Study, Series.study_id == Study.id)
                    .where(Study.study_uid == study_uid)
                )
            )
        for job in self.index.jobs(study_uid):
            for path in job.result_paths or []:
                try:
                    header = dcmread(Path(path), stop_before_pixels=True, specific_tags=[_SOP_UID])
                except (InvalidDicomError, OSError, ValueError) as e:
                    log.debug("watch: result file %s of job %d unreadable: %s", path, job.id, e)
                    continue
                known.add(str(header.get("SOPInstanceUID", "")))
        return known

    def _failed(self, reason: str) -> float:
        self._failed_polls += 1
        # The first failure already waits twice the interval.
        first = 2 * self.watch.interval_seconds
        delay = doubling_wait(first, self._failed_polls, ceiling=MAX_BACKOFF_SECONDS)
        if self._failed_polls == 1:
            log.warning(
                "watch: PACS %s: %s; polling again in %g s, waiting twice as long after each "
                "failure (up to %g s); logged again when it answers",
                self.pacs.ae_title,
                reason,
                delay,
                MAX_BACKOFF_SECONDS,
            )
        else:
            log.debug("watch: PACS %s still failing: %s", self.pacs.ae_title, reason)
        return max(delay, self.watch.interval_seconds)

    def _succeeded(self) -> float:
        if self._failed_polls:
            log.info(
                "watch: PACS %s answers again after %d failed poll(s)",
                self.pacs.ae_title,
                self._failed_polls,
            )
        self._failed_polls = 0
        return self.watch.interval_seconds
