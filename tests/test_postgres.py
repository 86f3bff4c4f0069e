"""The index on a real PostgreSQL: several node processes never run the same job twice."""

from __future__ import annotations

import multiprocessing
from datetime import timedelta
from pathlib import Path

from sqlalchemy import select

from fixtures.series import make_cr_study
from node.store.index import Index, PlannedJob
from node.store.models import Job, JobState, Study
from tests.conftest import instance_meta, node_config, storescu
from tests.peers import NodeProcess, Postgres, wait_for


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


def test_two_nodes_on_one_postgres_process_each_study_once(
    tmp_path: Path, test_model: Path, postgres: Postgres
) -> None:
    database = "twonodes"
    with Index(postgres.url).engine.connect() as conn:
        conn.execution_options(isolation_level="AUTOCOMMIT").exec_driver_sql(
            f"CREATE DATABASE {database}"
        )
    url = postgres.url.rsplit("/", 1)[0] + f"/{database}"
    nodes = []
    for name in ("a", "b"):
        config_path, config = node_config(
            tmp_path / name,
            test_model,
            node={
                "database_url": url,
                "data_dir": str(tmp_path / "shared-data"),
                "stable_seconds": 1,
            },
        )
        nodes.append(
            NodeProcess(config_path, tmp_path / f"{name}.log", config["node"]["port"]).start()
        )
    try:
        for number in range(4):
            node = nodes[number % 2]
            cr = make_cr_study(tmp_path / f"cr{number}", patient_id=f"PG-{number}")
            assert storescu(node.port, [cr]).returncode == 0
        index = Index(url)

        def all_done() -> bool:
            jobs = index.jobs()
            return len(jobs) == 4 and all(j.state == JobState.DONE for j in jobs)

        wait_for(all_done, timeout=240, what="four jobs done on two nodes")
    finally:
        for node in nodes:
            node.stop()
    jobs = index.jobs()
    assert all(j.attempts == 1 for j in jobs)
    logs = "".join((tmp_path / f"{n}.log").read_text() for n in ("a", "b"))
    for job in jobs:
        assert logs.count(f"job {job.id} (cxr-report)") >= 1
        assert (
            logs.count(
                f"job {job.id} (cxr-report) of study {index.study(job.study_id).study_uid} done"
            )
            == 1
        )
    index.close()
