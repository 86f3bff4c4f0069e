"""The worklist as JSON: studies, their series and jobs, findings, urgency, where results went.

Patient attributes (name, ID, birth date, sex) are served only when the caller says the
request passed a configured bearer token (``show_patient``): a node without a token
serves the same list with those keys null and ``patient_hidden`` true, so a patient's
name never reaches someone who needed no credential to ask. The index answers in three
queries whatever the number of studies (:meth:`node.store.index.Index.recent_studies`);
each job's record is read back into its task's model (:mod:`node.pipeline.record`), and
the answer is made of the API's models (:mod:`node.http.schemas`).
"""

from __future__ import annotations

import html
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import resources
from typing import TypeVar
from urllib.parse import quote

from pydicom import dcmread
from pydicom.errors import InvalidDicomError
from pydicom.uid import UID
from pydicom.valuerep import DA, TM

from node.config import VIEWER_PLACEHOLDER
from node.http.schemas import (
    JobImage,
    JobItem,
    JobTimings,
    ResultFile,
    SeriesItem,
    StudyItem,
    UnreadableResult,
)
from node.http.urgency import urgent_findings
from node.pipeline.record import CxrRecord, FindingsRecord, VolumeRecord, read_record
from node.store.index import Index, StudyOverview
from node.store.models import Job, JobState, Study, StudyState, aware, utcnow

log = logging.getLogger(__name__)

_V = TypeVar("_V")  # a parsed DICOM value

__all__ = [
    "FILTER_STATES",
    "PATIENT_KEYS",
    "ResultHeaders",
    "dicom_date",
    "dicom_time",
    "filter_state",
    "list_studies",
    "readable_name",
    "viewer_link",
    "worklist_page_html",
]

# What ?state= takes: a study state (the study is in it) or a job state (a job of the
# study is in it).
FILTER_STATES: tuple[StudyState | JobState, ...] = (*StudyState, *JobState)

# The keys that hold patient data; null unless the request passed a configured token.
PATIENT_KEYS: tuple[str, ...] = (
    "patient_name",
    "patient_id",
    "patient_birth_date",
    "patient_sex",
)
# Where worklist.html wants the state filter's options.
_STATE_OPTIONS_MARK = "<!-- state options -->"

# The state a routed study shows: the first of these that one of its current jobs is in.
_SHOWN_ORDER = (
    JobState.RUNNING,
    JobState.QUEUED,
    JobState.FAILED,
    JobState.UNDELIVERED,
    JobState.DONE,
)


def _iso(moment: datetime | None) -> str | None:
    if moment is None:
        return None
    return aware(moment).astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _seconds(start: datetime | None, end: datetime | None) -> float | None:
    if start is None:
        return None
    return round((aware(end or utcnow()) - aware(start)).total_seconds(), 3)


@dataclass(frozen=True)
class ResultInfo:
    sop_instance_uid: str
    sop_class_uid: str
    modality: str | None

    def as_item(self) -> ResultFile:
        return ResultFile(
            sop_instance_uid=self.sop_instance_uid,
            sop_class_uid=self.sop_class_uid,
            sop_class=UID(self.sop_class_uid).name,
            modality=self.modality,
        )


class ResultHeaders:
    """UIDs of result files, read from their headers once (the files never change)."""

    _TAGS = ["SOPInstanceUID", "SOPClassUID", "Modality"]

    def __init__(self, capacity: int = 4096) -> None:
        self._capacity = capacity
        self._cache: OrderedDict[str, ResultInfo] = OrderedDict()
        self._lock = threading.Lock()

    def info(self, path: str) -> ResultInfo | None:
        with self._lock:
            cached = self._cache.get(path)
            if cached is not None:
                self._cache.move_to_end(path)
                return cached
        try:
            ds = dcmread(path, stop_before_pixels=True, specific_tags=self._TAGS)
            info = ResultInfo(
                str(ds.SOPInstanceUID), str(ds.SOPClassUID), str(ds.get("Modality") or "") or None
            )
        except (InvalidDicomError, OSError, ValueError, AttributeError) as e:
            log.warning("result file %s unreadable: %s", path, e)
            return None
        with self._lock:
            self._cache[path] = info
            while len(self._cache) > self._capacity:
                self._cache.popitem(last=False)
        return info


def readable_name(person_name: str | None) -> str | None:
    """A DICOM PN as a reader writes it: ``Doe^Jane^Q^Dr^Jr`` → ``Doe, Dr Jane Q, Jr``.

    The first non-empty of the alphabetic, ideographic and phonetic groups (PS3.5 6.2.1:
    groups split by ``=``, components by ``^`` in the order family, given, middle,
    prefix, suffix). None when the name is empty.
    """
    if not person_name:
        return None
    group = next((g for g in person_name.split("=") if g.strip("^ ")), "")
    family, given, middle, prefix, suffix = ([c.strip() for c in group.split("^")] + [""] * 5)[:5]
    forenames = " ".join(part for part in (prefix, given, middle) if part)
    name = f"{family}, {forenames}" if family and forenames else family or forenames
    if suffix:
        name = f"{name}, {suffix}" if name else suffix
    return name or None


def dicom_date(value: str | None) -> str | None:
    """A DA value as YYYY-MM-DD; one that isn't a date comes back as sent (shown, not lost)."""
    return _rewritten(value, DA, lambda parsed: parsed.isoformat())


def dicom_time(value: str | None) -> str | None:
    """A TM value as HH:MM:SS; one that isn't a time comes back as sent."""
    return _rewritten(value, TM, lambda parsed: parsed.isoformat(timespec="seconds"))


def _rewritten(
    value: str | None, parse: Callable[[str], _V | None], render: Callable[[_V], str]
) -> str | None:
    if not value:
        return None
    try:
        parsed = parse(value)
    except ValueError:
        return value
    return render(parsed) if parsed is not None else None


def viewer_link(template: str | None, study_uid: str) -> str | None:
    """``node.viewer_url`` with the study's UID in its placeholder; None without a template."""
    if template is None:
        return None
    return template.replace("{" + VIEWER_PLACEHOLDER + "}", quote(study_uid, safe=""))


def worklist_page_html() -> str:
    """worklist.html with the state filter's options (FILTER_STATES) written in."""
    page = resources.files("node.http").joinpath("worklist.html").read_text(encoding="utf-8")
    if _STATE_OPTIONS_MARK not in page:
        raise RuntimeError(f"worklist.html lacks {_STATE_OPTIONS_MARK!r} for the state filter")
    options = "".join(
        f'<option value="{html.escape(state)}">{html.escape(state)}</option>'
        for state in FILTER_STATES
    )
    return page.replace(_STATE_OPTIONS_MARK, options)


def filter_state(value: str | None) -> StudyState | JobState | None:
    """What ``?state=`` names; ValueError naming it and every state it may be."""
    if value is None:
        return None
    for states in (StudyState, JobState):
        if value in tuple(states):
            return states(value)
    raise ValueError(f"state {value!r} is none of: {', '.join(FILTER_STATES)}")


def _job_item(job: Job, study: Study, results: ResultHeaders) -> JobItem:
    record = read_record(job.task, job.record, job_id=job.id)
    cxr = record if isinstance(record, CxrRecord) else None
    # What a reader scans first: the impression, or the whole report when it has none.
    impression = cxr.impression if cxr and cxr.impression is not None else None
    if cxr and impression is None:
        impression = cxr.report
    result_items: list[ResultFile | UnreadableResult] = []
    for path in job.result_paths or []:
        info = results.info(path)
        result_items.append(info.as_item() if info else UnreadableResult(error="unreadable"))
    urgent = urgent_findings(record) if job.state != JobState.SUPERSEDED else []
    return JobItem(
        id=job.id,
        task=job.task,
        state=job.state,
        rule=job.rule,
        series=list(job.series_uids),
        attempts=job.attempts,
        error=job.error,
        timings=JobTimings(
            received_first=_iso(study.first_received),
            received_last=_iso(study.last_received),
            created=_iso(job.created_at),
            started=_iso(job.started_at),
            finished=_iso(job.finished_at),
            seconds=_seconds(job.started_at, job.finished_at)
            if job.state != JobState.QUEUED
            else None,
        ),
        model=record.model,
        test_model=record.test_model,
        findings=record.findings if isinstance(record, FindingsRecord) else [],
        verdicts=cxr.verdicts if cxr else [],
        volume_answer=record.verdict if isinstance(record, VolumeRecord) else None,
        impression=impression,
        boxes=cxr.boxes if cxr else [],
        urgent=bool(urgent),
        urgent_findings=urgent,
        image=(
            JobImage(sop_instance_uid=cxr.image, url=f"/api/jobs/{job.id}/image.png")
            if cxr and cxr.image
            else None
        ),
        delivered=job.delivered,
        delivered_to=list(job.delivered_to or []),
        results=result_items,
    )


def _shown_state(study: Study, jobs: Sequence[Job]) -> StudyState | JobState:
    if study.state != StudyState.ROUTED:
        return study.state
    current = {job.state for job in jobs if job.state != JobState.SUPERSEDED}
    for state in _SHOWN_ORDER:
        if state in current:
            return state
    return study.state


def _study_item(
    overview: StudyOverview, results: ResultHeaders, *, show_patient: bool, viewer_url: str | None
) -> StudyItem:
    study = overview.study
    jobs = [_job_item(job, study, results) for job in overview.jobs]
    current = [job for job in jobs if job.state != JobState.SUPERSEDED]
    urgent = list(dict.fromkeys(f for job in current for f in job.urgent_findings))
    with_image = [job.image for job in current if job.image]
    modalities = [series.modality for series, _ in overview.series if series.modality]
    shown = show_patient  # only for a request that passed a configured token
    return StudyItem(
        study_instance_uid=study.study_uid,
        accession_number=study.accession_number,
        patient_name=readable_name(study.patient_name) if shown else None,
        patient_id=study.patient_id if shown else None,
        patient_birth_date=dicom_date(study.patient_birth_date) if shown else None,
        patient_sex=study.patient_sex if shown else None,
        patient_hidden=not shown,
        study_date=dicom_date(study.study_date),
        study_time=dicom_time(study.study_time),
        study_description=study.study_description,
        # ModalitiesInStudy: each once, in the order the series arrived.
        modalities=list(dict.fromkeys(modalities)),
        viewer_url=viewer_link(viewer_url, study.study_uid),
        state=_shown_state(study, overview.jobs),
        note=study.note,
        received_first=_iso(study.first_received),
        received_last=_iso(study.last_received),
        expected_instances=study.expected_instances,
        instances=sum(count for _, count in overview.series),
        series=[
            SeriesItem(
                series_instance_uid=series.series_uid,
                modality=series.modality,
                body_part=series.body_part,
                instances=count,
                sender=series.calling_ae,
            )
            for series, count in overview.series
        ],
        urgent=bool(urgent),
        urgent_findings=urgent,
        findings=list(dict.fromkeys(f for job in current for f in job.findings)),
        test_model=any(job.test_model for job in current),
        image_url=with_image[-1].url if with_image else None,
        jobs=jobs,
    )


def list_studies(
    index: Index,
    results: ResultHeaders,
    *,
    state: StudyState | JobState | None = None,
    limit: int = 100,
    show_patient: bool = False,
    viewer_url: str | None = None,
) -> list[StudyItem]:
    """Studies, most recently received first, as the worklist page and ``/api/studies`` show them.

    ``state``: a study state (receiving, routed, skipped): studies in it; or a job state
    (queued, running, done, failed, undelivered, superseded): studies with a job in it
    (:func:`filter_state` reads it from the query). ``show_patient``: fill
    :data:`PATIENT_KEYS` (only for a request that passed a configured token); otherwise
    they are null. ``viewer_url``: ``node.viewer_url``.
    """
    return [
        _study_item(overview, results, show_patient=show_patient, viewer_url=viewer_url)
        for overview in index.recent_studies(state=state, limit=limit)
    ]
