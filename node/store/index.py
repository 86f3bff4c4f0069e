"""The index: filing instances, finding stable studies, the studies the worklist shows.

:class:`Index` is the one object the node's parts ask: it adds filing and studies to the
job queue (:mod:`node.store.jobs`) over the database (:mod:`node.store.database`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    Connection,
    bindparam,
    case,
    exists,
    func,
    select,
    update,
)
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import IntegrityError

from node.store.database import make_engine
from node.store.jobs import JobQueue, PlannedJob, queued_job
from node.store.meta import InstanceMeta
from node.store.models import (
    Base,
    Instance,
    Job,
    JobState,
    ResultInstance,
    Series,
    Study,
    StudyState,
    utcnow,
)

log = logging.getLogger(__name__)

__all__ = ["REOPENED_NOTE", "Filed", "Index", "PlannedJob", "StudyOverview", "make_engine"]

REOPENED_NOTE = "re-opened by instances that arrived after routing"

# The InstanceMeta fields each row is filed from; the columns carry the same names
# (except a series' ``description``, which is meta.series_description).
_STUDY_FIELDS = (
    "study_uid patient_id accession_number patient_name patient_birth_date patient_sex"
    " study_date study_time study_description referring_physician dicom_study_id"
).split()
_SERIES_FIELDS = (
    "series_uid modality body_part image_type sop_class_uid calling_ae series_number"
).split()
_INSTANCE_FIELDS = (
    "sop_uid sop_class_uid transfer_syntax_uid instance_number rows columns number_of_frames"
).split()
_RESULT_FIELDS = ["series_uid", "modality", "series_number", "series_description"]


def _values(meta: InstanceMeta, fields: Sequence[str]) -> dict[str, object]:
    return {name: getattr(meta, name) for name in fields}


class Filed(StrEnum):
    NEW = "new"
    DUPLICATE = "duplicate"  # same SOP Instance UID seen before: the file is replaced, no new work


@dataclass(frozen=True)
class StudyOverview:
    """A study as the worklist lists it: its series with their instance counts, its jobs."""

    study: Study
    series: list[tuple[Series, int]]  # in the order they arrived
    jobs: list[Job]  # oldest first, superseded ones included


class Index(JobQueue):
    def __init__(self, url: str) -> None:
        super().__init__(url)
        self._study_ids: dict[str, int] = {}
        self._series_ids: dict[str, int] = {}
        self._prepare_statements()

    # -- filing -------------------------------------------------------------------------

    def file_instance(self, meta: InstanceMeta, path: str, *, reopen: bool) -> Filed:
        """Record an instance already durable at ``path``.

        ``reopen``: whether an instance new to a study that is already routed sends the
        study back to receiving (the ``late_arrivals: rerun`` policy).
        """
        for attempt in range(3):
            try:
                return self._file_instance(meta, path, reopen=reopen)
            except IntegrityError:
                # Another process or association created the same study/series/instance
                # between our read and insert; the retry finds it.
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def _file_instance(self, meta: InstanceMeta, path: str, *, reopen: bool) -> Filed:
        # Runs once per received instance while the sender waits: prepared statements
        # (their compiled form is cached) and remembered study/series ids.
        now = utcnow()
        with self._write_guard(), self.engine.begin() as conn:
            study_id = self._row_id(
                conn,
                Study,
                meta.study_uid,
                lambda: _values(meta, _STUDY_FIELDS)
                | {"state": StudyState.RECEIVING, "first_received": now, "last_received": now},
            )
            series_id = self._row_id(
                conn,
                Series,
                meta.series_uid,
                lambda: _values(meta, _SERIES_FIELDS)
                | {"study_id": study_id, "description": meta.series_description},
            )
            inserted = conn.execute(
                self._insert_instance,
                {
                    **_values(meta, _INSTANCE_FIELDS),
                    "series_id": series_id,
                    "path": path,
                    "received_at": now,
                },
            )
            if inserted.rowcount == 0:
                conn.execute(self._replace_path, {"sop": meta.sop_uid, "new_path": path})
                return Filed.DUPLICATE
            statement = self._touch_and_reopen_study if reopen else self._touch_study
            conn.execute(statement, {"study": study_id, "now": now})
        # Only ids of committed rows may be remembered.
        self._study_ids[meta.study_uid] = study_id
        self._series_ids[meta.series_uid] = series_id
        return Filed.NEW

    def _prepare_statements(self) -> None:
        self._insert_instance = self._insert_ignore(Instance, "sop_uid")
        self._replace_path = (
            update(Instance)
            .where(Instance.sop_uid == bindparam("sop"))
            .values(path=bindparam("new_path"))
        )
        touch = update(Study).where(Study.id == bindparam("study"))
        self._touch_study = touch.values(last_received=bindparam("now"))
        # One statement: a routed study goes back to receiving under `rerun`.
        self._touch_and_reopen_study = touch.values(
            last_received=bindparam("now"),
            state=StudyState.RECEIVING,
            note=case((Study.state != StudyState.RECEIVING, REOPENED_NOTE), else_=Study.note),
        )

    def _insert_ignore(self, model: type[Base], unique_column: str) -> Any:
        if self.is_sqlite:
            return sqlite_insert(model).on_conflict_do_nothing(index_elements=[unique_column])
        return postgresql_insert(model).on_conflict_do_nothing(index_elements=[unique_column])

    def _row_id(
        self,
        conn: Connection,
        model: type[Study | Series],
        uid: str,
        values: Callable[[], dict[str, object]],
    ) -> int:
        """The id of the study or series ``uid``, inserting it with ``values()`` if new
        (built only then: this runs for every instance received, while the sender waits)."""
        key = "study_uid" if model is Study else "series_uid"
        ids = self._study_ids if model is Study else self._series_ids
        cached = ids.get(uid)
        if cached is not None:
            return cached
        conn.execute(self._insert_ignore(model, key).values(**values()))
        return int(conn.scalar(select(model.id).where(getattr(model, key) == uid)) or 0)

    def file_results(self, job_id: int, results: Sequence[tuple[InstanceMeta, str]]) -> None:
        """Record the result objects a job wrote (at those paths), for DICOMweb to serve.

        Filing the same object again (a job whose delivery is retried) changes nothing.
        """
        if not results:
            return
        with self._write_guard(), self.engine.begin() as conn:
            study_id = conn.scalar(select(Job.study_id).where(Job.id == job_id))
            if study_id is None:
                raise KeyError(f"job {job_id} is not in the index")
            conn.execute(
                self._insert_ignore(ResultInstance, "sop_uid"),
                [
                    {
                        **_values(meta, _INSTANCE_FIELDS),
                        **_values(meta, _RESULT_FIELDS),
                        "study_id": study_id,
                        "job_id": job_id,
                        "path": path,
                        "created_at": utcnow(),
                    }
                    for meta, path in results
                ],
            )

    def known_sop_uids(self) -> set[str]:
        with self.session() as s:
            return set(s.scalars(select(Instance.sop_uid)))

    # -- studies ------------------------------------------------------------------------

    def receiving_studies(self) -> list[Study]:
        with self.session() as s:
            return list(s.scalars(select(Study).where(Study.state == StudyState.RECEIVING)))

    def instance_count(self, study_id: int) -> int:
        with self.session() as s:
            query = (
                select(func.count(Instance.id))
                .join(Series, Instance.series_id == Series.id)
                .where(Series.study_id == study_id)
            )
            return int(s.scalar(query) or 0)

    def set_expected(self, study_id: int, expected: int | None) -> None:
        with self.writing() as s:
            study = s.get_one(Study, study_id)
            study.expected_instances = expected
            study.expected_checked = utcnow()

    def series_of(self, study_id: int) -> list[Series]:
        with self.session() as s:
            return list(s.scalars(select(Series).where(Series.study_id == study_id)))

    def instance_paths(self, series_uids: Sequence[str]) -> dict[str, list[str]]:
        with self.session() as s:
            rows = s.execute(
                select(Series.series_uid, Instance.path)
                .join(Instance, Instance.series_id == Series.id)
                .where(Series.series_uid.in_(series_uids))
                .order_by(Instance.id)
            )
            paths: dict[str, list[str]] = {uid: [] for uid in series_uids}
            for series_uid, path in rows:
                paths[series_uid].append(path)
            return paths

    def route_study(
        self, study_id: int, planned: Sequence[PlannedJob], *, seen_last: datetime
    ) -> bool:
        """Replace the study's queued work with ``planned``; False if instances came meanwhile."""
        with self.writing() as s:
            study = s.get_one(Study, study_id, with_for_update=not self.is_sqlite)
            if study.state != StudyState.RECEIVING or study.last_received != seen_last:
                return False
            s.execute(
                update(Job)
                .where(Job.study_id == study_id, Job.state.in_([JobState.QUEUED, JobState.FAILED]))
                .values(state=JobState.SUPERSEDED, finished_at=utcnow())
            )
            s.add_all(queued_job(study_id, job) for job in planned)
            if planned:
                self._queued(s)
            study.state = StudyState.ROUTED if planned else StudyState.SKIPPED
            study.note = None if planned else "no routing rule matched any series"
            return True

    def study(self, study_id: int) -> Study:
        with self.session() as s:
            return s.get_one(Study, study_id)

    # -- the worklist -------------------------------------------------------------------

    def recent_studies(
        self, *, state: StudyState | JobState | None = None, limit: int = 100
    ) -> list[StudyOverview]:
        """Studies, most recently received first, with their series and jobs: three
        queries (studies, series with instance counts, jobs) whatever their number.

        ``state``: a study state (studies in it) or a job state (studies with a job in it).
        """
        query = select(Study).order_by(Study.last_received.desc(), Study.id.desc()).limit(limit)
        if isinstance(state, StudyState):
            query = query.where(Study.state == state)
        elif state is not None:
            query = query.where(exists().where(Job.study_id == Study.id, Job.state == state))
        with self.session() as s:
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
        return [StudyOverview(study, series_of[study.id], jobs_of[study.id]) for study in studies]

    def instance_path(self, sop_uid: str) -> str | None:
        """Where the instance a sender delivered is stored; None when the index lacks it."""
        with self.session() as s:
            return s.scalar(select(Instance.path).where(Instance.sop_uid == sop_uid))
