"""The worklist as JSON: studies, their series and jobs, findings, urgency, where results went.

Patient attributes (name, ID, birth date, sex) are served only when the caller says the
request passed a configured bearer token (``show_patient``): a node without a token
serves the same list with those keys null and ``patient_hidden`` true, so a patient's
name never reaches someone who needed no credential to ask. Three queries per call
(studies, series with instance counts, jobs), whatever the number of studies.
"""

from __future__ import annotations

import html
import logging
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import quote

from pydicom import dcmread
from pydicom.errors import InvalidDicomError
from pydicom.uid import UID
from pydicom.valuerep import DA, TM
from sqlalchemy import exists, func, select

from node.config import VIEWER_PLACEHOLDER
from node.http.urgency import urgent_findings
from node.store.index import Index
from node.store.models import Instance, Job, JobState, Series, Study, StudyState, utcnow

log = logging.getLogger(__name__)

__all__ = [
    "FILTER_STATES",
    "PATIENT_KEYS",
    "ResultHeaders",
    "dicom_date",
    "dicom_time",
    "list_studies",
    "readable_name",
    "source_path",
    "viewer_link",
    "worklist_page_html",
]

# What ?state= takes: a study state (the study is in it) or a job state (a job of the
# study is in it).
FILTER_STATES: tuple[str, ...] = (*StudyState, *JobState)

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
    if moment.tzinfo is None:  # SQLite hands back naive datetimes; the index writes UTC
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _seconds(start: datetime | None, end: datetime | None) -> float | None:
    if start is None:
        return None
    if start.tzinfo is None:
        start = start.replace(tzinfo=UTC)
    end = end or utcnow()
    if end.tzinfo is None:
        end = end.replace(tzinfo=UTC)
    return round((end - start).total_seconds(), 3)


@dataclass(frozen=True)
class ResultInfo:
    sop_instance_uid: str
    sop_class_uid: str
    modality: str | None

    def as_json(self) -> dict[str, Any]:
        return {
            "sop_instance_uid": self.sop_instance_uid,
            "sop_class_uid": self.sop_class_uid,
            "sop_class": UID(self.sop_class_uid).name,
            "modality": self.modality,
        }


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
    if not value:
        return None
    try:
        parsed = DA(value)
    except ValueError:
        return value
    return parsed.isoformat() if parsed is not None else None


def dicom_time(value: str | None) -> str | None:
    """A TM value as HH:MM:SS; one that isn't a time comes back as sent."""
    if not value:
        return None
    try:
        parsed = TM(value)
    except ValueError:
        return value
    return parsed.isoformat(timespec="seconds") if parsed is not None else None


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


def _patient_json(study: Study, shown: bool) -> dict[str, Any]:
    if not shown:
        return {**dict.fromkeys(PATIENT_KEYS), "patient_hidden": True}
    return {
        "patient_name": readable_name(study.patient_name),
        "patient_id": study.patient_id,
        "patient_birth_date": dicom_date(study.patient_birth_date),
        "patient_sex": study.patient_sex,
        "patient_hidden": False,
    }


def _strings(value: object) -> list[str]:
    return [str(item) for item in value] if isinstance(value, list) else []


def _job_json(job: Job, study: Study, results: ResultHeaders) -> dict[str, Any]:
    record: dict[str, object] = dict(job.record or {})
    urgent = urgent_findings(record) if job.state != JobState.SUPERSEDED else []
    image_uid = record.get("image")
    result_items = []
    for path in job.result_paths or []:
        info = results.info(path)
        result_items.append(
            info.as_json() if info else {"sop_instance_uid": None, "error": "unreadable"}
        )
    impression = next(
        (record[key] for key in ("impression", "report") if isinstance(record.get(key), str)),
        None,
    )
    return {
        "id": job.id,
        "task": job.task,
        "rule": job.rule,
        "state": job.state,
        "attempts": job.attempts,
        "error": job.error,
        "series": list(job.series_uids),
        "timings": {
            "received_first": _iso(study.first_received),
            "received_last": _iso(study.last_received),
            "created": _iso(job.created_at),
            "started": _iso(job.started_at),
            "finished": _iso(job.finished_at),
            # The last attempt's run time; still counting while the job runs.
            "seconds": _seconds(job.started_at, job.finished_at)
            if job.state != JobState.QUEUED
            else None,
        },
        "model": record.get("model"),
        "test_model": bool(record.get("test_model", False)),
        "findings": _strings(record.get("findings")),
        "verdicts": _strings(record.get("verdicts")),
        # CT/MR: the model's yes/no to "any acute abnormality?"; None for other tasks.
        "volume_answer": record.get("verdict") if isinstance(record.get("verdict"), bool) else None,
        "impression": impression,
        "boxes": record.get("boxes") if isinstance(record.get("boxes"), list) else [],
        "urgent": bool(urgent),
        "urgent_findings": urgent,
        "image": (
            {"sop_instance_uid": str(image_uid), "url": f"/api/jobs/{job.id}/image.png"}
            if isinstance(image_uid, str) and image_uid
            else None
        ),
        "delivered": job.delivered,
        "delivered_to": list(job.delivered_to or []),
        "results": result_items,
    }


def _shown_state(study: Study, jobs: Sequence[Job]) -> str:
    if study.state != StudyState.ROUTED:
        return str(study.state)
    current = {job.state for job in jobs if job.state != JobState.SUPERSEDED}
    for state in _SHOWN_ORDER:
        if state in current:
            return str(state)
    return str(study.state)


def list_studies(
    index: Index,
    results: ResultHeaders,
    *,
    state: str | None = None,
    limit: int = 100,
    show_patient: bool = False,
    viewer_url: str | None = None,
) -> list[dict[str, Any]]:
    """Studies, most recently received first, as the worklist page and ``/api/studies`` show them.

    ``state``: a study state (receiving, routed, skipped): studies in it; or a job state
    (queued, running, done, failed, undelivered, superseded): studies with a job in it.
    ``show_patient``: fill :data:`PATIENT_KEYS` (only for a request that passed a
    configured token); otherwise they are null. ``viewer_url``: ``node.viewer_url``.
    """
    query = select(Study).order_by(Study.last_received.desc(), Study.id.desc()).limit(limit)
    if state in tuple(StudyState):
        query = query.where(Study.state == state)
    elif state is not None:
        if state not in tuple(JobState):
            raise ValueError(f"state {state!r} is none of {', '.join(FILTER_STATES)}")
        query = query.where(exists().where(Job.study_id == Study.id, Job.state == state))
    with index.session() as s:
        studies = list(s.scalars(query))
        ids = [study.id for study in studies]
        series_rows = s.execute(
            select(Series, func.count(Instance.id))
            .outerjoin(Instance, Instance.series_id == Series.id)
            .where(Series.study_id.in_(ids))
            .group_by(Series.id)
            .order_by(Series.id)
        ).all()
        jobs = list(s.scalars(select(Job).where(Job.study_id.in_(ids)).order_by(Job.id)))
    series_of: dict[int, list[tuple[Series, int]]] = {i: [] for i in ids}
    for series, count in series_rows:
        series_of[series.study_id].append((series, int(count)))
    jobs_of: dict[int, list[Job]] = {i: [] for i in ids}
    for job in jobs:
        jobs_of[job.study_id].append(job)

    listed = []
    for study in studies:
        job_items = [_job_json(job, study, results) for job in jobs_of[study.id]]
        current = [item for item in job_items if item["state"] != JobState.SUPERSEDED]
        urgent = list(dict.fromkeys(f for item in current for f in item["urgent_findings"]))
        with_image = [item for item in current if item["image"]]
        modalities = [series.modality for series, _ in series_of[study.id] if series.modality]
        listed.append(
            {
                "study_instance_uid": study.study_uid,
                "accession_number": study.accession_number,
                **_patient_json(study, show_patient),
                "study_date": dicom_date(study.study_date),
                "study_time": dicom_time(study.study_time),
                "study_description": study.study_description,
                # ModalitiesInStudy: each once, in the order the series arrived.
                "modalities": list(dict.fromkeys(modalities)),
                "viewer_url": viewer_link(viewer_url, study.study_uid),
                "state": _shown_state(study, jobs_of[study.id]),
                "note": study.note,
                "received_first": _iso(study.first_received),
                "received_last": _iso(study.last_received),
                "expected_instances": study.expected_instances,
                "instances": sum(count for _, count in series_of[study.id]),
                "series": [
                    {
                        "series_instance_uid": series.series_uid,
                        "modality": series.modality,
                        "body_part": series.body_part,
                        "instances": count,
                        "sender": series.calling_ae,
                    }
                    for series, count in series_of[study.id]
                ],
                "urgent": bool(urgent),
                "urgent_findings": urgent,
                "findings": list(dict.fromkeys(f for item in current for f in item["findings"])),
                "test_model": any(item["test_model"] for item in current),
                "image_url": with_image[-1]["image"]["url"] if with_image else None,
                "jobs": job_items,
            }
        )
    return listed


def source_path(index: Index, sop_instance_uid: str) -> Path | None:
    """Where the index keeps an instance's file; None when it doesn't know the instance."""
    with index.session() as s:
        path = s.scalar(select(Instance.path).where(Instance.sop_uid == sop_instance_uid))
    return Path(path) if path else None
