"""The job queue, safe across processes: claim, lease, finish, retry, reprocess.

Jobs are claimed with a conditional UPDATE (and ``FOR UPDATE SKIP LOCKED`` where the
database has it), so several node processes on one PostgreSQL never run a job twice.
A running job holds a lease; a crashed worker's lease expires and the job is queued again.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import event, func, select, text, update
from sqlalchemy.orm import Session

from node.config import Task
from node.store.database import Database
from node.store.models import Job, JobState, Study, aware, utcnow
from node.store.wakeup import CHANNEL, announce_sqlite, wake_dir

__all__ = ["JobQueue", "PlannedJob", "queued_job"]


@dataclass(frozen=True)
class PlannedJob:
    """A job routing wants for a study (:func:`node.studies.routing.plan_jobs`)."""

    task: str  # a Task value
    rule: str
    series_uids: list[str]
    save_inputs: bool = False


def queued_job(study_id: int, work: PlannedJob | Job) -> Job:
    """A new queued job of the study for ``work``: routing's plan, or an earlier job run again."""
    return Job(
        study_id=study_id,
        task=Task(work.task),
        rule=work.rule,
        series_uids=list(work.series_uids),
        save_inputs=work.save_inputs,
        state=JobState.QUEUED,
    )


class JobQueue(Database):
    """The ``jobs`` table's work: :class:`node.store.index.Index` has these methods.

    Every write that queues a job tells the waiting workers (:mod:`node.store.wakeup`).
    """

    def _queued(self, session: Session) -> None:
        """Jobs were queued in ``session``: the waiting workers hear of it at its commit."""
        if not self.is_sqlite:
            session.execute(text(f"NOTIFY {CHANNEL}"))  # delivered at commit
            return
        directory = wake_dir(self.url)
        if directory is not None:
            event.listen(
                session, "after_commit", lambda _s: announce_sqlite(directory), once=True
            )

    def next_claimable_in(self, at_most: float) -> float:
        """Seconds until a job may become claimable without anyone queueing one (a retry
        falls due, a running job's lease runs out), up to ``at_most``."""
        now = utcnow()
        with self.session() as s:
            retry = s.scalar(
                select(func.min(Job.retry_at)).where(
                    Job.state == JobState.QUEUED, Job.retry_at > now
                )
            )
            lease = s.scalar(
                select(func.min(Job.lease_until)).where(
                    Job.state == JobState.RUNNING, Job.lease_until > now
                )
            )
        due = [aware(t) for t in (retry, lease) if t is not None]
        if not due:
            return at_most
        return min(at_most, max(0.0, (min(due) - utcnow()).total_seconds()))

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
            query = select(Job).where(Job.state == JobState.RUNNING, Job.lease_until < now)
            if not self.is_sqlite:
                # Locked while requeued, and skipped by everyone else meanwhile: without it a
                # second worker that read the expired lease overwrote the first one's fresh
                # claim with QUEUED, and the job ran twice at once.
                query = query.with_for_update(skip_locked=True)
            expired = list(s.scalars(query))
            requeued = False
            for job in expired:
                if job.attempts >= max_attempts:
                    job.state = JobState.FAILED
                    job.error = f"worker {job.worker} stopped {job.attempts} times; gave up"
                    job.finished_at = now
                else:
                    job.state = JobState.QUEUED
                    job.error = f"worker {job.worker} stopped during attempt {job.attempts}"
                    requeued = True
            if requeued:
                self._queued(s)
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
            if jobs:
                self._queued(s)
            return sorted(job.id for job in jobs)

    def reprocess(self, study_uid: str) -> list[int]:
        """New jobs for the study's latest work per rule; the finished ones they replace are
        marked superseded. Jobs still queued or running are left to finish."""
        with self.writing() as s:
            study = s.scalar(select(Study).where(Study.study_uid == study_uid))
            if study is None:
                raise KeyError(f"study {study_uid} is not in the index")
            latest: dict[tuple[Task, str], Job] = {}
            for job in s.scalars(select(Job).where(Job.study_id == study.id).order_by(Job.id)):
                latest[(job.task, job.rule)] = job
            created = []
            for job in latest.values():
                if job.state in (JobState.QUEUED, JobState.RUNNING):
                    continue
                job.state = JobState.SUPERSEDED
                new = queued_job(study.id, job)
                s.add(new)
                created.append(new)
            s.flush()
            if created:
                self._queued(s)
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
            if result.rowcount:  # type: ignore[attr-defined]
                self._queued(s)
            return int(result.rowcount)  # type: ignore[attr-defined]
