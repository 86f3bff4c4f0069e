"""When is a study complete? When the PACS says all its instances are here, or when it went quiet.

Asking the PACS (C-FIND NumberOfStudyRelatedInstances) starts work as soon as the last
instance lands instead of waiting ``stable_seconds``; a PACS that is down or doesn't
know the study leaves the timeout in charge.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from functools import partial

from node.config import PacsSettings, Settings
from node.dicomweb import qido
from node.dimse import scu
from node.store.index import Index
from node.store.models import Study, utcnow
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

    def tick(self, now: datetime | None = None) -> int:
        """Route every receiving study that is complete; returns how many were routed."""
        now = now or utcnow()
        routed = 0
        for study in self.index.receiving_studies():
            reason = self._complete(study, now)
            if reason is None:
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
        return routed

    def _complete(self, study: Study, now: datetime) -> str | None:
        if now - _aware(study.last_received) >= self.stable:
            return f"no instance for {self.settings.node.stable_seconds:g} s"
        if self.count_query is None:
            return None
        checked = study.expected_checked
        if checked is None or now - _aware(checked) >= RECHECK:
            try:
                expected = self.count_query(study.study_uid)
                self._pacs_down_logged = False
            except Exception as e:
                if not self._pacs_down_logged:
                    log.warning("can't ask the PACS how large study %s is: %s", study.study_uid, e)
                    self._pacs_down_logged = True
                expected = None
            self.index.set_expected(study.id, expected)
        else:
            expected = study.expected_instances
        if expected:
            have = self.index.instance_count(study.id)
            if have >= expected:
                return f"all {expected} instances the PACS has are here"
        return None


def _aware(value: datetime) -> datetime:
    # SQLite hands back naive datetimes even for timezone-aware columns.
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)
