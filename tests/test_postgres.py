"""The index on a real PostgreSQL: several node processes never run the same job twice."""

from __future__ import annotations

import multiprocessing
import re
import threading
from datetime import timedelta
from pathlib import Path

from pydicom import dcmread
from sqlalchemy import create_engine, select, text

from fixtures.series import make_cr_study
from node.store.index import Index, PlannedJob
from node.store.models import Job, JobState, Study
from tests.conftest import instance_meta, node_config, storescu
from tests.peers import NodeProcess, Orthanc, Postgres, wait_for


def _claim_all(url: str, worker: str, out: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    index = Index(url)
    claimed = []
    while (job := index.claim_job(worker, timedelta(seconds=60))) is not None:
        claimed.append(job.id)
        index.update_job(job.id, worker, state=JobState.DONE)
    out.put((worker, claimed))
    index.close()


def test_jobs_are_claimed_once_across_processes(postgres: Postgres) -> None:
    index = Index(postgres.url)
    study_uid = "1.2.826.0.1.3680043.8.498.777"
    index.file_instance(instance_meta(study_uid, 1), "/nowhere", reopen=True)
    with index.session() as s:
        study = s.scalars(select(Study).where(Study.study_uid == study_uid)).one()
    planned = [PlannedJob(task="cxr-report", rule=f"r{i}", series_uids=[]) for i in range(60)]
    assert index.route_study(study.id, planned, seen_last=study.last_received)

    queue: multiprocessing.Queue = multiprocessing.get_context("spawn").Queue()  # type: ignore[type-arg]
    context = multiprocessing.get_context("spawn")
    workers = [
        context.Process(target=_claim_all, args=(postgres.url, f"w{i}", queue)) for i in range(3)
    ]
    for w in workers:
        w.start()
    results = dict(queue.get(timeout=120) for _ in workers)
    for w in workers:
        w.join(timeout=30)
    claimed = [job_id for ids in results.values() for job_id in ids]
    assert len(claimed) == len(set(claimed)) == 60
    with index.session() as s:
        jobs = list(s.scalars(select(Job).where(Job.study_id == study.id)))
    assert all(j.attempts == 1 and j.state == JobState.DONE for j in jobs)
    index.close()


def test_a_claim_made_while_another_worker_requeues_the_expired_job_stands(
    postgres: Postgres,
) -> None:
    """Worker X requeues a job whose lease ran out and claims it again in one transaction;
    worker Y, which looks for expired leases at that moment, must leave X's claim alone
    (it once overwrote it with QUEUED, and the job ran twice at once)."""
    url = postgres.fresh_database("requeue_race")
    index = Index(url)
    study_uid = "1.2.826.0.1.3680043.8.498.778"
    index.file_instance(instance_meta(study_uid, 1), "/nowhere", reopen=True)
    with index.session() as s:
        study = s.scalars(select(Study).where(Study.study_uid == study_uid)).one()
    planned = [PlannedJob(task="cxr-report", rule="r", series_uids=[])]
    assert index.route_study(study.id, planned, seen_last=study.last_received)
    job = index.claim_job("dead-worker", timedelta(seconds=-1))  # its lease already over
    assert job is not None
    other = create_engine(url)
    with other.connect() as x:
        x.execute(text("SELECT id FROM jobs WHERE id = :id FOR UPDATE"), {"id": job.id})
        x.execute(
            text(
                "UPDATE jobs SET worker = 'x', attempts = attempts + 1, lease_until = :until "
                "WHERE id = :id"
            ),
            {"id": job.id, "until": job.started_at + timedelta(hours=1)},
        )
        counted: list[int] = []
        y = threading.Thread(target=lambda: counted.append(index.requeue_expired(5)))
        y.start()
        y.join(timeout=5)  # skips X's locked row at once; before, it waited on it
        x.commit()
    y.join(timeout=30)
    other.dispose()
    after = index.job(job.id)
    index.close()
    assert counted == [0]
    assert (after.state, after.worker, after.attempts) == (JobState.RUNNING, "x", 2)


BURST = 8


def test_two_nodes_on_one_postgres_share_a_burst_and_each_study_gets_one_result(
    tmp_path: Path, test_model: Path, postgres: Postgres, orthanc: Orthanc
) -> None:
    database = "twonodes"
    with Index(postgres.url).engine.connect() as conn:
        conn.execution_options(isolation_level="AUTOCOMMIT").exec_driver_sql(
            f"CREATE DATABASE {database}"
        )
    url = postgres.url.rsplit("/", 1)[0] + f"/{database}"
    orthanc.start()
    nodes = []
    for name, batch_size in (("a", 2), ("b", 1)):  # node a runs two jobs at once, batched
        config_path, config = node_config(
            tmp_path / name,
            test_model,
            node={
                "database_url": url,
                "data_dir": str(tmp_path / "shared-data"),
                "stable_seconds": 1,
            },
            model={"batch_size": batch_size, "batch_wait_ms": 200},
            pacs={"ae_title": orthanc.aet, "host": "127.0.0.1", "port": orthanc.dicom_port},
            outputs=["sr"],
        )
        nodes.append(
            NodeProcess(config_path, tmp_path / f"{name}.log", config["node"]["port"]).start()
        )
    studies = []
    try:
        for node in nodes:  # both models loaded: the burst is shared, not taken by the first
            wait_for(lambda n=node: " loaded TEST MODEL" in n.log(None), timeout=120, what="model")
        for number in range(BURST):
            node = nodes[number % 2]
            cr = make_cr_study(tmp_path / f"cr{number}", patient_id=f"PG-{number}")
            studies.append(str(dcmread(cr, stop_before_pixels=True).StudyInstanceUID))
            assert storescu(node.port, [cr]).returncode == 0
        index = Index(url)

        def all_done() -> bool:
            jobs = index.jobs()
            return len(jobs) == BURST and all(j.state == JobState.DONE for j in jobs)

        wait_for(all_done, timeout=300, what=f"{BURST} jobs done on two nodes")
    finally:
        for node in nodes:
            node.stop()
    jobs = index.jobs()
    assert all(j.attempts == 1 for j in jobs)
    logs = {n: (tmp_path / f"{n}.log").read_text() for n in ("a", "b")}
    done_by = {
        n: len(re.findall(r"\(cxr-report\) of study \S+ done: ", log)) for n, log in logs.items()
    }
    assert sum(done_by.values()) == BURST and all(done_by.values()), done_by  # both worked
    for job in jobs:
        done = f"job {job.id} (cxr-report) of study {index.study(job.study_id).study_uid} done"
        assert sum(log.count(done) for log in logs.values()) == 1
    # every study has exactly one result at the PACS
    for study_uid in studies:
        found = orthanc.post(
            "/tools/find",
            {"Level": "Instance", "Query": {"StudyInstanceUID": study_uid, "Modality": "SR"}},
        )
        assert len(found) == 1, study_uid
    index.close()
