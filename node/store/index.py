"""The index: filing instances, finding stable studies, a job queue safe across processes.

Jobs are claimed with a conditional UPDATE (and ``FOR UPDATE SKIP LOCKED`` where the
database has it), so several node processes on one PostgreSQL never run a job twice.
A running job holds a lease; a crashed worker's lease expires and the job is queued again.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from pathlib import Path
from typing import Any

from sqlalchemy import (
    Connection,
    Engine,
    bindparam,
    case,
    create_engine,
    event,
    func,
    make_url,
    select,
    update,
)
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from node.store import schema
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


REOPENED_NOTE = "re-opened by instances that arrived after routing"


class Filed(StrEnum):
    NEW = "new"
    DUPLICATE = "duplicate"  # same SOP Instance UID seen before: the file is replaced, no new work


@dataclass(frozen=True)
class PlannedJob:
    task: str
    rule: str
    series_uids: list[str]
    save_inputs: bool = False


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    # WAL + NORMAL: a committed row survives a killed process; the spool is reconciled
    # into the index at start-up, so a power loss can't lose an acknowledged instance either.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        database = make_url(url).database
        if database and database != ":memory:":
            Path(database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    return create_engine(url, pool_pre_ping=True)


class Index:
    def __init__(self, url: str) -> None:
        self.engine = make_engine(url)
        self.is_sqlite = self.engine.dialect.name == "sqlite"
        schema.upgrade(self.engine)  # a no-op once the database is at this release's schema
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        # SQLite has one writer at a time anyway; serialising writers in-process avoids
        # busy-waiting between the SCP's association threads.
        self._write_lock = threading.Lock() if self.is_sqlite else None
        self._study_ids: dict[str, int] = {}
        self._series_ids: dict[str, int] = {}
        self._prepare_statements()

    @contextmanager
    def session(self) -> Iterator[Session]:
        with self._sessions() as session:
            yield session

    @contextmanager
    def _write_guard(self) -> Iterator[None]:
        if self._write_lock is None:
            yield
            return
        with self._write_lock:
            yield

    @contextmanager
    def writing(self) -> Iterator[Session]:
        with self._write_guard(), self._sessions.begin() as session:
            yield session

    def close(self) -> None:
        self.engine.dispose()

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
            study_id = self._study_id(conn, meta, now)
            series_id = self._series_id(conn, meta, study_id)
            inserted = conn.execute(
                self._insert_instance,
                {
                    "series_id": series_id,
                    "sop_uid": meta.sop_uid,
                    "sop_class_uid": meta.sop_class_uid,
                    "transfer_syntax_uid": meta.transfer_syntax_uid,
                    "path": path,
                    "received_at": now,
                    "instance_number": meta.instance_number,
                    "rows": meta.rows,
                    "columns": meta.columns,
                    "number_of_frames": meta.number_of_frames,
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

    def _study_id(self, conn: Connection, meta: InstanceMeta, now: datetime) -> int:
        cached = self._study_ids.get(meta.study_uid)
        if cached is not None:
            return cached
        conn.execute(
            self._insert_ignore(Study, "study_uid").values(
                study_uid=meta.study_uid,
                patient_id=meta.patient_id,
                accession_number=meta.accession_number,
                patient_name=meta.patient_name,
                patient_birth_date=meta.patient_birth_date,
                patient_sex=meta.patient_sex,
                study_date=meta.study_date,
                study_time=meta.study_time,
                study_description=meta.study_description,
                referring_physician=meta.referring_physician,
                dicom_study_id=meta.dicom_study_id,
                state=StudyState.RECEIVING,
                first_received=now,
                last_received=now,
            )
        )
        return int(conn.scalar(select(Study.id).where(Study.study_uid == meta.study_uid)) or 0)

    def _series_id(self, conn: Connection, meta: InstanceMeta, study_id: int) -> int:
        cached = self._series_ids.get(meta.series_uid)
        if cached is not None:
            return cached
        conn.execute(
            self._insert_ignore(Series, "series_uid").values(
                study_id=study_id,
                series_uid=meta.series_uid,
                modality=meta.modality,
                body_part=meta.body_part,
                description=meta.series_description,
                image_type=meta.image_type,
                sop_class_uid=meta.sop_class_uid,
                calling_ae=meta.calling_ae,
                series_number=meta.series_number,
            )
        )
        series_id = conn.scalar(select(Series.id).where(Series.series_uid == meta.series_uid))
        return int(series_id or 0)

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
                        "study_id": study_id,
                        "job_id": job_id,
                        "series_uid": meta.series_uid,
                        "sop_uid": meta.sop_uid,
                        "sop_class_uid": meta.sop_class_uid,
                        "transfer_syntax_uid": meta.transfer_syntax_uid,
                        "modality": meta.modality,
                        "series_number": meta.series_number,
                        "series_description": meta.series_description,
                        "instance_number": meta.instance_number,
                        "rows": meta.rows,
                        "columns": meta.columns,
                        "number_of_frames": meta.number_of_frames,
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
            for job in planned:
                s.add(
                    Job(
                        study_id=study_id,
                        task=job.task,
                        rule=job.rule,
                        series_uids=list(job.series_uids),
                        save_inputs=job.save_inputs,
                        state=JobState.QUEUED,
                    )
                )
            study.state = StudyState.ROUTED if planned else StudyState.SKIPPED
            study.note = None if planned else "no routing rule matched any series"
            return True

    # -- jobs ---------------------------------------------------------------------------

    def claim_job(self, worker: str, lease: timedelta) -> Job | None:
        """Take the oldest queued job for ``worker``, or None when there is none."""
        with self.writing() as s:
            now = utcnow()
            query = (
                select(Job.id)
                .where(
                    Job.state == JobState.QUEUED,
                    (Job.retry_at.is_(None)) | (Job.retry_at <= now),
                )
                .order_by(Job.id)
                .limit(1)
            )
            if not self.is_sqlite:
                query = query.with_for_update(skip_locked=True)
            job_id = s.scalar(query)
            if job_id is None:
                return None
            claimed = s.execute(
                update(Job)
                .where(Job.id == job_id, Job.state == JobState.QUEUED)
                .values(
                    state=JobState.RUNNING,
                    worker=worker,
                    attempts=Job.attempts + 1,
                    started_at=now,
                    lease_until=now + lease,
                )
            )
            if claimed.rowcount != 1:  # type: ignore[attr-defined]
                return None
        return self.job(job_id)

    def job(self, job_id: int) -> Job:
        with self.session() as s:
            return s.get_one(Job, job_id)

    def jobs(self, study_uid: str | None = None) -> list[Job]:
        with self.session() as s:
            query = select(Job).order_by(Job.id)
            if study_uid is not None:
                query = query.join(Study).where(Study.study_uid == study_uid)
            return list(s.scalars(query))

    def study(self, study_id: int) -> Study:
        with self.session() as s:
            return s.get_one(Study, study_id)

    def renew_lease(self, job_id: int, worker: str, lease: timedelta) -> None:
        with self.writing() as s:
            s.execute(
                update(Job)
                .where(Job.id == job_id, Job.worker == worker, Job.state == JobState.RUNNING)
                .values(lease_until=utcnow() + lease)
            )

    def update_job(self, job_id: int, worker: str, **values: Any) -> bool:
        """Write ``values`` on a job this worker still holds; False if it lost the lease."""
        with self.writing() as s:
            result = s.execute(
                update(Job)
                .where(Job.id == job_id, Job.worker == worker, Job.state == JobState.RUNNING)
                .values(**values)
            )
            return bool(result.rowcount == 1)  # type: ignore[attr-defined]

    def requeue_expired(self, max_attempts: int) -> int:
        """Jobs whose worker died: queue them again, or fail them after ``max_attempts``."""
        now = utcnow()
        with self.writing() as s:
            expired = list(
                s.scalars(select(Job).where(Job.state == JobState.RUNNING, Job.lease_until < now))
            )
            for job in expired:
                if job.attempts >= max_attempts:
                    job.state = JobState.FAILED
                    job.error = f"worker {job.worker} stopped {job.attempts} times; gave up"
                    job.finished_at = now
                else:
                    job.state = JobState.QUEUED
                    job.error = f"worker {job.worker} stopped during attempt {job.attempts}"
            return len(expired)

    def earlier_results(self, job: Job) -> list[str]:
        """Result files of the latest earlier job of ``job``'s study and task that made any.

        A reprocessed study's new report names these as its predecessor.
        """
        with self.session() as s:
            earlier = s.scalars(
                select(Job)
                .where(Job.study_id == job.study_id, Job.task == job.task, Job.id < job.id)
                .order_by(Job.id.desc())
            )
            for candidate in earlier:
                if candidate.result_paths:
                    return list(candidate.result_paths)
        return []

    def retry_jobs(self, job_ids: Sequence[int] | None = None) -> list[int]:
        """Queue dead-lettered (undelivered) and failed jobs again; None: every one of them.

        An undelivered job keeps its results and only re-sends them; a failed one runs again.
        """
        with self.writing() as s:
            query = select(Job).where(Job.state.in_([JobState.UNDELIVERED, JobState.FAILED]))
            if job_ids is not None:
                query = query.where(Job.id.in_(list(job_ids)))
            jobs = list(s.scalars(query))
            for job in jobs:
                if not job.result_paths:
                    job.attempts = 0
                job.state = JobState.QUEUED
                job.delivery_attempts = 0
                job.retry_at = None
                job.finished_at = None
                job.error = f"re-queued by hand; last error: {job.error}"
            return sorted(job.id for job in jobs)

    def reprocess(self, study_uid: str) -> list[int]:
        """New jobs for the study's latest work per rule; the finished ones they replace are
        marked superseded. Jobs still queued or running are left to finish."""
        with self.writing() as s:
            study = s.scalar(select(Study).where(Study.study_uid == study_uid))
            if study is None:
                raise KeyError(f"study {study_uid} is not in the index")
            latest: dict[tuple[str, str], Job] = {}
            for job in s.scalars(select(Job).where(Job.study_id == study.id).order_by(Job.id)):
                latest[(job.task, job.rule)] = job
            created = []
            for job in latest.values():
                if job.state in (JobState.QUEUED, JobState.RUNNING):
                    continue
                job.state = JobState.SUPERSEDED
                new = Job(
                    study_id=study.id,
                    task=job.task,
                    rule=job.rule,
                    series_uids=list(job.series_uids),
                    save_inputs=job.save_inputs,
                    state=JobState.QUEUED,
                )
                s.add(new)
                created.append(new)
            s.flush()
            return [job.id for job in created]

    def running_workers(self) -> set[str]:
        with self.session() as s:
            return set(s.scalars(select(Job.worker).where(Job.state == JobState.RUNNING)))

    def release_jobs_of(self, workers: Sequence[str]) -> int:
        """Jobs held by workers known to be dead go straight back to the queue."""
        if not workers:
            return 0
        with self.writing() as s:
            result = s.execute(
                update(Job)
                .where(Job.state == JobState.RUNNING, Job.worker.in_(list(workers)))
                .values(state=JobState.QUEUED, error="the node restarted during the job")
            )
            return int(result.rowcount)  # type: ignore[attr-defined]
