"""When is a study complete? When the PACS says all its instances are here, or when it went quiet.

Asking the PACS (C-FIND NumberOfStudyRelatedInstances) starts work as soon as the last
instance lands instead of waiting ``stable_seconds``; a PACS that is down or doesn't
know the study leaves the timeout in charge.

The watcher doesn't poll: it sleeps until the earliest moment a study may be complete
(its quiet deadline, or the next time its PACS count is due to be asked again), and
ingest wakes it when a study it hasn't scheduled arrives or when an instance brings a
study to the count the PACS gave. ``node.poll_seconds`` bounds the sleep as a safety net.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import datetime, timedelta
from functools import partial

from node.config import PacsSettings, Settings
from node.dicomweb import qido
from node.dimse import scu
from node.store.index import Index
from node.store.models import Study, aware, utcnow
from node.studies.routing import plan_jobs

log = logging.getLogger(__name__)

CountQuery = Callable[[str], int | None]

# How often one receiving study's expected count is asked again.
RECHECK = timedelta(seconds=2)


def pacs_count_query(pacs: PacsSettings, calling_ae: str) -> CountQuery:
    """QIDO-RS when the PACS has a DICOMweb URL, else a Study Root C-FIND; either raises
    PacsUnavailable when the PACS can't answer, which leaves the timeout in charge."""
    if pacs.dicomweb_url is not None:
        return partial(qido.count_study_instances, pacs=pacs)
    return partial(scu.count_study_instances, pacs=pacs, calling_ae=calling_ae)


class CompletenessWatcher:
    def __init__(self, settings: Settings, index: Index, count_query: CountQuery | None) -> None:
        self.settings = settings
        self.index = index
        self.count_query = count_query
        self.stable = timedelta(seconds=settings.node.stable_seconds)
        self._pacs_down_logged = False
        self._wake = threading.Event()
        self._lock = threading.Lock()
        # What the last tick knew: receiving studies, and for those with a PACS count,
        # (instances here, instances the PACS has); ingest's arrivals update the first.
        self._scheduled: set[str] = set()
        self._counts: dict[str, list[int]] = {}
        self.next_check: datetime | None = None  # when the last tick said to look again

    def arrived(self, study_uid: str) -> None:
        """Ingest's word that a new instance of ``study_uid`` is filed; any thread, cheap."""
        with self._lock:
            if study_uid not in self._scheduled:
                self._wake.set()  # a new study: its deadline needs scheduling
                return
            count = self._counts.get(study_uid)
            if count is not None:
                count[0] += 1
                if count[0] >= count[1]:
                    self._wake.set()

    def wake(self) -> None:
        """End the current sleep (a stop, or a change the watcher can't hear of)."""
        self._wake.set()

    def run(self, stop: threading.Event) -> None:
        """Route studies as they complete until ``stop`` is set (then call :meth:`wake`)."""
        safety = self.settings.node.poll_seconds
        while not stop.is_set():
            self._wake.clear()
            try:
                self.tick()
            except Exception:
                log.exception("completeness check failed; trying again")
                self.next_check = None
            sleep = safety
            if self.next_check is not None:
                sleep = min(safety, max(0.0, (self.next_check - utcnow()).total_seconds()))
            self._wake.wait(sleep)

    def tick(self, now: datetime | None = None) -> int:
        """Route every receiving study that is complete; returns how many were routed."""
        now = now or utcnow()
        routed = 0
        receiving = self.index.receiving_studies()
        with self._lock:
            self._scheduled = {study.study_uid for study in receiving}
            self._counts = {}
        next_check: datetime | None = None
        for study in receiving:
            reason = self._complete(study, now)
            if reason is None:
                due = self._due(study)
                next_check = due if next_check is None else min(next_check, due)
                continue
            planned = plan_jobs(self.index.series_of(study.id), self.settings.routing)
            if self.index.route_study(study.id, planned, seen_last=study.last_received):
                routed += 1
                tasks = ", ".join(f"{p.task} ({len(p.series_uids)} series)" for p in planned)
                log.info(
                    "study %s complete (%s): %s",
                    study.study_uid,
                    reason,
                    tasks or "no rule matched; skipped",
                )
            else:
                next_check = now  # instances came meanwhile: look again at once
        self.next_check = next_check
        return routed

    def _due(self, study: Study) -> datetime:
        """The earliest moment an incomplete study may have become complete."""
        due = aware(study.last_received) + self.stable
        if self.count_query is not None:
            checked = study.expected_checked
            due = min(due, (aware(checked) if checked else utcnow()) + RECHECK)
        return due

    def _complete(self, study: Study, now: datetime) -> str | None:
        if now - aware(study.last_received) >= self.stable:
            return f"no instance for {self.settings.node.stable_seconds:g} s"
        if self.count_query is None:
            return None
        checked = study.expected_checked
        if checked is None or now - aware(checked) >= RECHECK:
            try:
                expected = self.count_query(study.study_uid)
                self._pacs_down_logged = False
            except Exception as e:
                if not self._pacs_down_logged:
                    log.warning("can't ask the PACS how large study %s is: %s", study.study_uid, e)
                    self._pacs_down_logged = True
                expected = None
            self.index.set_expected(study.id, expected)
            # As set_expected wrote it: _due counts the next ask from this one, not from
            # the row's older time (which would call for a second tick at once).
            study.expected_checked = now
        else:
            expected = study.expected_instances
        if expected:
            have = self.index.instance_count(study.id)
            if have >= expected:
                return f"all {expected} instances the PACS has are here"
            with self._lock:
                self._counts[study.study_uid] = [have, expected]
        return None

