"""The worklist as JSON: studies, their series and jobs, findings, urgency, where results went.

Patient-free on purpose: studies are named by Study Instance UID and accession number
only; no patient name, ID or birth date leaves the node this way. Three queries per call
(studies, series with instance counts, jobs), whatever the number of studies.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydicom import dcmread
from pydicom.errors import InvalidDicomError
from pydicom.uid import UID
from sqlalchemy import exists, func, select

from node.http.urgency import urgent_findings
from node.store.index import Index
from node.store.models import Instance, Job, JobState, Series, Study, StudyState, utcnow

log = logging.getLogger(__name__)

__all__ = ["FILTER_STATES", "ResultHeaders", "list_studies", "source_path"]

# What ?state= takes: a study state (the study is in it) or a job state (a job of the
# study is in it).
FILTER_STATES: tuple[str, ...] = (*StudyState, *JobState)

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
    index: Index, results: ResultHeaders, *, state: str | None = None, limit: int = 100
) -> list[dict[str, Any]]:
    """Studies, most recently received first, as the worklist page and ``/api/studies`` show them.

    ``state``: a study state (receiving, routed, skipped): studies in it; or a job state
    (queued, running, done, failed, undelivered, superseded): studies with a job in it.
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
        listed.append(
            {
                "study_instance_uid": study.study_uid,
                "accession_number": study.accession_number,
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
