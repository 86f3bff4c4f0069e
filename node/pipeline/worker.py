"""The job worker: claim a job, run its task, save and deliver the results, record the outcome.

Inference and delivery are separate steps: once a job's results are on disk a retry
only redelivers them, so a PACS outage never costs a second model run.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from datetime import timedelta
from pathlib import Path

from node import metrics
from node.audit import AuditEvent, AuditLog, RunOutcome
from node.backoff import doubling_wait
from node.config import Output, Settings, Task
from node.dispatch.deliver import DeliveryFailed, save_results, send, targets
from node.inference.request import Engine
from node.pipeline.offload import TaskProcesses
from node.pipeline.tasks import InputError, TaskInput, run_task
from node.priors.lookup import PriorLookup
from node.store.index import Index
from node.store.meta import InstanceMeta
from node.store.models import Job, JobState, utcnow
from node.store.wakeup import JobWakeups

log = logging.getLogger(__name__)

LEASE = timedelta(seconds=60)
RENEW_EVERY = 15.0


def worker_id(number: int = 0, slot: int = 0) -> str:
    """host:pid:process-number.slot; the pid lets a restarted node spot dead workers."""
    return f"{socket.gethostname()}:{os.getpid()}:{number}.{slot}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def release_dead_local_workers(index: Index) -> int:
    """Jobs held by this host's dead processes go back to the queue at once, not after the lease."""
    host = socket.gethostname()
    dead = []
    for worker in index.running_workers():
        parts = (worker or "").split(":")
        if len(parts) == 3 and parts[0] == host and parts[1].isdigit():
            if not _pid_alive(int(parts[1])):
                dead.append(worker)
    released = index.release_jobs_of(dead)
    if released:
        log.warning("re-queued %d jobs left running by a stopped node process", released)
    return released


class Worker:
    def __init__(
        self,
        settings: Settings,
        index: Index,
        engine: Engine,
        tasks: TaskProcesses | None = None,
        *,
        number: int = 0,
        slot: int = 0,
    ) -> None:
        self.settings = settings
        self.index = index
        self.engine = engine
        self.tasks = tasks  # None: tasks run on the job's own thread
        self.id = worker_id(number, slot)
        self.results_root = settings.node.data_dir / "results"
        self.inputs_root = settings.node.data_dir / "inputs"
        self.audit = AuditLog.from_settings(settings.node)

    def run(self, stop: threading.Event, wakeups: JobWakeups) -> None:
        """Claim and run jobs until ``stop`` is set (then wake ``wakeups``).

        Idle, it sleeps until a job is queued (a wake-up), a retry falls due or a running
        job's lease runs out, or ``node.poll_seconds`` pass, whichever is first.
        """
        poll = self.settings.node.poll_seconds
        while not stop.is_set():
            seen = wakeups.generation  # before looking, so no wake-up slips between
            try:
                worked = self.run_once()
                idle = 0.0 if worked else self.index.next_claimable_in(poll)
            except Exception:
                log.exception("worker %s: unexpected error; continuing", self.id)
                idle = poll
            if idle > 0 and not stop.is_set():
                wakeups.wait(seen, idle)

    def run_once(self) -> bool:
        self.index.requeue_expired(self.settings.node.max_attempts)
        job = self.index.claim_job(self.id, LEASE)
        if job is None:
            return False
        stop_renewing = threading.Event()
        renewer = threading.Thread(
            target=self._renew,
            args=(job.id, stop_renewing),
            daemon=True,
            name=f"lease-{job.id}",
        )
        renewer.start()
        try:
            self._process(job)
        finally:
            stop_renewing.set()
            renewer.join()
        return True

    def _renew(self, job_id: int, stop: threading.Event) -> None:
        while not stop.wait(RENEW_EVERY):
            self.index.renew_lease(job_id, self.id, LEASE)

    def _process(self, job: Job) -> None:
        study = self.index.study(job.study_id)
        label = f"job {job.id} ({job.task}) of study {study.study_uid}"
        paths = job.result_paths
        if not paths:
            started = time.monotonic()
            try:
                paths = self._infer(job)
            except InputError as e:
                log.error("%s failed: %s", label, e)
                self._model_ran(job, study.study_uid, started, RunOutcome.FAILED, str(e))
                self._finish(job, JobState.FAILED, error=str(e))
                return
            except Exception as e:
                log.exception("%s: attempt %d failed", label, job.attempts)
                error = f"{type(e).__name__}: {e}"
                self._model_ran(job, study.study_uid, started, RunOutcome.ERROR, error)
                self._retry_or_fail(job, error)
                return
            self._model_ran(job, study.study_uid, started, RunOutcome.OK)
        self._deliver(job, paths, label, study_uid=study.study_uid)

    def _model_ran(
        self,
        job: Job,
        study_uid: str,
        started: float,
        outcome: RunOutcome,
        error: str | None = None,
    ) -> None:
        """Audit and time one run of a job's task."""
        seconds = time.monotonic() - started
        if outcome is RunOutcome.OK:
            metrics.model_run(job.task, seconds)
        else:
            metrics.model_error(job.task)
        self.audit.record(
            AuditEvent.MODEL_RUN,
            job_id=job.id,
            task=job.task,
            study_uid=study_uid,
            model=self.engine.label,
            test_model=self.engine.is_test_model,
            attempt=job.attempts,
            seconds=round(seconds, 3),
            outcome=outcome,
            error=error,
        )

    def _deliver(self, job: Job, paths: list[str], label: str, *, study_uid: str) -> None:
        """Send to every destination that lacks the results; back off or dead-letter on failure."""
        delivered = list(job.delivered_to or [])
        failures: list[str] = []
        for target in targets(self.settings):
            if target.name in delivered:
                continue
            if job.delivery_attempts:
                metrics.delivery_retried(target.name)
            try:
                sent = send(paths, target, calling_ae=self.settings.node.ae_title)
            except DeliveryFailed as e:
                failures.append(str(e))
                self._delivery_failed(job, study_uid, target.name, str(e))
                continue
            except Exception as e:  # a result file gone missing, a malformed response
                log.exception("%s: delivery to %s failed", label, target.describe())
                failures.append(f"{target.name}: {type(e).__name__}: {e}")
                self._delivery_failed(job, study_uid, target.name, failures[-1])
                continue
            metrics.delivered(target.name)
            self.audit.record(
                AuditEvent.RESULTS_SENT,
                job_id=job.id,
                study_uid=study_uid,
                destination=target.name,
                protocol=target.protocol,
                sop_instance_uids=sent,
            )
            delivered.append(target.name)
            self.index.update_job(job.id, self.id, delivered_to=list(delivered))
        if not failures:
            log.info(
                "%s done: %d results saved, sent to %s", label, len(paths), delivered or "none"
            )
            self._finish(job, JobState.DONE, delivered=bool(delivered))
            return
        policy = self.settings.delivery
        attempts = job.delivery_attempts + 1
        error = "delivery failed: " + "; ".join(failures)
        if attempts >= policy.max_attempts:
            error += (
                f" (dead-lettered after {attempts} delivery attempts; results kept in "
                f"{Path(paths[0]).parent}; `medgemma-node retry {job.id}` sends them again)"
            )
            log.error("%s: %s", label, error)
            metrics.dead_lettered()
            self.audit.record(
                AuditEvent.DEAD_LETTERED,
                job_id=job.id,
                study_uid=study_uid,
                delivery_attempts=attempts,
                error=error,
            )
            failed = {"error": error, "delivery_attempts": attempts, "lease_until": None}
            self.index.update_job(
                job.id, self.id, state=JobState.UNDELIVERED, finished_at=utcnow(), **failed
            )
            return
        wait = policy.wait_after(attempts)
        log.warning("%s: results saved, %s; next try in %.0f s", label, error, wait)
        self.index.update_job(
            job.id,
            self.id,
            state=JobState.QUEUED,
            error=error,
            delivery_attempts=attempts,
            retry_at=utcnow() + timedelta(seconds=wait),
            lease_until=None,
        )

    def _delivery_failed(self, job: Job, study_uid: str, destination: str, error: str) -> None:
        metrics.delivery_failed(destination)
        self.audit.record(
            AuditEvent.DELIVERY_FAILED,
            job_id=job.id,
            study_uid=study_uid,
            destination=destination,
            delivery_attempt=job.delivery_attempts + 1,
            error=error,
        )

    def _infer(self, job: Job) -> list[str]:
        series = {
            uid: [Path(p) for p in files]
            for uid, files in self.index.instance_paths(job.series_uids).items()
        }
        save_inputs = self.inputs_root / f"job-{job.id}" if job.save_inputs else None
        task_input = TaskInput(
            job.task,
            series,
            save_inputs,
            self.settings.model.max_new_tokens,
            self.settings.imaging,
            self._prior_lookup(job.task),
            self.settings.localization,
            self._outputs_wanted(),
            tuple(Path(p) for p in self.index.earlier_results(job)),
        )
        if self.tasks is not None:
            outcome = self.tasks.run(task_input)
        else:
            outcome = run_task(task_input, self.engine)
        paths = save_results(outcome.results, self.results_root / f"job-{job.id}")
        record = outcome.record
        record.model, record.test_model = self.engine.label, self.engine.is_test_model
        # Stored as JSON; node.pipeline.record.read_record reads it back into the same model.
        stored = record.model_dump(mode="json")
        if not self.index.update_job(job.id, self.id, result_paths=paths, record=stored):
            raise RuntimeError(f"lost the lease on job {job.id} while it ran")
        self.index.file_results(
            job.id,
            [
                (
                    InstanceMeta.from_dataset(
                        ds, transfer_syntax_uid=ds.file_meta.TransferSyntaxUID, calling_ae=None
                    ),
                    path,
                )
                for ds, path in zip(outcome.results, paths, strict=True)
            ],
        )
        return paths

    def _outputs_wanted(self) -> frozenset[Output]:
        """Every output some destination takes; all configured ones when results stay here."""
        wanted = [target.outputs for target in targets(self.settings)]
        return frozenset().union(*wanted) if wanted else frozenset(self.settings.outputs)

    def _prior_lookup(self, task: Task) -> PriorLookup | None:
        pacs, priors = self.settings.pacs, self.settings.priors
        wanted = task in priors.tasks or task is Task.CXR_LONGITUDINAL
        if pacs is None or not priors.enabled or not wanted:
            return None
        return PriorLookup(
            pacs=pacs,
            settings=priors,
            calling_ae=self.settings.node.ae_title,
            cache_root=self.settings.node.data_dir / "priors",
        )

    def _retry_or_fail(self, job: Job, error: str) -> None:
        if job.attempts >= self.settings.node.max_attempts:
            self._finish(job, JobState.FAILED, error=f"{error} (gave up after {job.attempts})")
            return
        self.index.update_job(
            job.id,
            self.id,
            state=JobState.QUEUED,
            error=error,
            retry_at=utcnow()
            + timedelta(seconds=doubling_wait(self.settings.node.retry_seconds, job.attempts)),
            lease_until=None,
        )

    def _finish(
        self, job: Job, state: JobState, *, error: str | None = None, delivered: bool = False
    ) -> None:
        self.index.update_job(
            job.id,
            self.id,
            state=state,
            error=error,
            delivered=delivered,
            finished_at=utcnow(),
            lease_until=None,
        )
