"""Wake-ups instead of polls: a queued job reaches a waiting worker at once, on SQLite
(Unix datagram sockets) and PostgreSQL (LISTEN/NOTIFY), across processes; and a served
node whose safety-net poll is minutes long still answers a study within seconds, because
the completeness watcher and the worker are woken, not polling."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pydicom

from fixtures.series import make_cr_study
from node.store.index import Index
from node.store.wakeup import JobWakeups, announce_sqlite, wake_dir
from tests.conftest import instance_meta, node_config, storescu
from tests.peers import NodeProcess, Postgres, wait_for

# Long enough that a test passing within its waits can only have been woken.
NO_POLL_SECONDS = 600

# Another process queues a job for a study filed in the index at URL.
_ROUTE = """
import sys
from node.store.index import Index, PlannedJob
index = Index(sys.argv[1])
study = index.receiving_studies()[0]
planned = [PlannedJob("cxr-report", "chest", [sys.argv[2]])] if sys.argv[3] == "job" else []
assert index.route_study(study.id, planned, seen_last=study.last_received)
"""


def _receiving_study(url: str, uid: str) -> str:
    """File one instance of study ``uid``; returns its series UID."""
    meta = instance_meta(uid, 1)
    Index(url).file_instance(meta, "/nonexistent", reopen=False)
    return meta.series_uid


def _route_elsewhere(url: str, series_uid: str, *, with_job: bool) -> None:
    done = subprocess.run(
        [sys.executable, "-c", _ROUTE, url, series_uid, "job" if with_job else "none"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr


def _assert_woken_by_another_process(url: str) -> None:
    series_uid = _receiving_study(url, "1.2.826.0.1.3680043.8.498.7001")
    ear = JobWakeups(url)
    try:
        # SQLite: bound when made; PostgreSQL: a first wake-up once LISTEN is in place.
        wait_for(
            lambda: wake_dir(url) is not None or ear.generation > 0,
            timeout=30,
            what="the wake-ups to listen",
        )
        seen = ear.generation
        _route_elsewhere(url, series_uid, with_job=True)
        ear.wait(seen, 60)
        assert ear.generation != seen, "queueing a job in another process woke nobody"
    finally:
        ear.close()


def test_a_job_queued_in_another_process_wakes_a_waiting_one_on_sqlite(tmp_path: Path) -> None:
    _assert_woken_by_another_process(f"sqlite:///{tmp_path / 'index.sqlite'}")


def test_a_job_queued_in_another_process_wakes_a_waiting_one_on_postgresql(
    postgres: Postgres,
) -> None:
    database = "wakeups"
    with Index(postgres.url).engine.connect() as conn:
        conn.execution_options(isolation_level="AUTOCOMMIT").exec_driver_sql(
            f"CREATE DATABASE {database}"
        )
    _assert_woken_by_another_process(postgres.url.rsplit("/", 1)[0] + f"/{database}")


def test_a_study_routed_to_no_job_wakes_no_worker(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'index.sqlite'}"
    series_uid = _receiving_study(url, "1.2.826.0.1.3680043.8.498.7002")
    ear = JobWakeups(url)
    try:
        seen = ear.generation
        _route_elsewhere(url, series_uid, with_job=False)
        ear.wait(seen, 2)
        assert ear.generation == seen, "a write that queued nothing woke the workers"
    finally:
        ear.close()


def test_the_socket_of_a_process_that_is_gone_is_removed(tmp_path: Path) -> None:
    directory = wake_dir(f"sqlite:///{tmp_path / 'index.sqlite'}")
    assert directory is not None
    directory.mkdir(mode=0o700, exist_ok=True)
    gone = directory / "999999-dead"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as ear:
        ear.bind(str(gone))  # bound, then closed: nobody reads it any more
    assert gone.exists()
    announce_sqlite(directory)
    assert not gone.exists()


def test_a_served_node_answers_a_study_without_polling(tmp_path: Path, test_model: Path) -> None:
    config_path, config = node_config(
        tmp_path,
        test_model,
        node={"stable_seconds": 1, "poll_seconds": NO_POLL_SECONDS},
        outputs=["sr"],
    )
    node = NodeProcess(config_path, tmp_path / "node.log", config["node"]["port"]).start()
    try:
        wait_for(lambda: " loaded TEST MODEL" in node.log(None), timeout=120, what="the model")
        # Idle now: the watcher and the worker sleep for up to NO_POLL_SECONDS.
        cr = make_cr_study(tmp_path / "cr", patient_id="WAKE-1")
        study_uid = str(pydicom.dcmread(cr, stop_before_pixels=True).StudyInstanceUID)
        assert storescu(config["node"]["port"], [cr]).returncode == 0

        wait_for(
            lambda: f"of study {study_uid} done: " in node.log(None),
            timeout=120,
            what=f"study {study_uid}'s job to be done",
        )
        assert f"study {study_uid} complete (no instance for 1 s)" in node.log(None)
    finally:
        node.stop()
