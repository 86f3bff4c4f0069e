"""Failure paths the README promises, each against the real process: a database that goes
away, a worker killed mid-job, a model that keeps failing."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from datetime import datetime
from pathlib import Path
from typing import Any

from pydicom import dcmread
from pynetdicom import AE

from fixtures.series import make_cr_study, make_ct_series
from node.config import load_settings
from node.store.index import Index
from node.store.models import JobState
from tests.conftest import node_config, storescu
from tests.peers import NodeProcess, Postgres, free_port, stow_post, wait_for


def _get(url: str) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return 0, None


def _children(pid: int) -> list[int]:
    found = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True)
    return [int(line) for line in found.stdout.split()]


def _workers(pid: int) -> list[int]:
    """The node's worker processes: its children but multiprocessing's resource tracker."""
    workers = []
    for child in _children(pid):
        try:
            command = Path(f"/proc/{child}/cmdline").read_bytes()
        except OSError:
            continue
        if b"resource_tracker" not in command:
            workers.append(child)
    return workers


def test_healthz_says_503_while_the_database_is_down_and_the_node_serves_after(
    tmp_path: Path, test_model: Path
) -> None:
    database = Postgres(Path("/tmp") / f"mgn-pg-health-{os.getpid()}").start()
    try:
        config_path, config = node_config(tmp_path, test_model, node={"database_url": database.url})
        node = NodeProcess(config_path, tmp_path / "node.log", config["node"]["port"]).start()
        health = f"http://127.0.0.1:{config['node']['http_port']}/healthz"
        try:
            wait_for(lambda: _get(health)[0] == 200, timeout=180, what="a healthy node")
            database.stop()
            status, body = wait_for(
                lambda: (answer := _get(health))[0] == 503 and answer, timeout=60, what="503"
            )
            assert body["status"] == "unavailable" and body["database_reachable"] is False
            assert body["workers_alive"] >= 1  # the workers are fine; the index is not
            # An instance arriving now is refused, by C-STORE and by STOW-RS, to be sent again.
            cr = make_cr_study(tmp_path / "in", patient_id="HEALTH-1")
            uid = str(dcmread(cr, stop_before_pixels=True).SOPInstanceUID)
            assert _send_each(config["node"]["port"], [cr]) == {uid: 0xA700}
            refused = stow_post(config["node"]["http_port"], cr.read_bytes())
            assert refused.status_code == 503, refused.text
            assert node.log(None).count(" not filed: the index can't take it") == 2
            assert not list((tmp_path / "node-data" / "spool").rglob("*.dcm"))
            database.start()
            wait_for(lambda: _get(health)[0] == 200, timeout=60, what="healthy again")
            # ... and it does its work again: the CR sent again gets its report.
            assert _send_each(config["node"]["port"], [cr]) == {uid: 0x0000}
            index = Index(database.url)
            try:
                jobs = wait_for(
                    lambda: [j for j in index.jobs() if j.state == JobState.DONE],
                    timeout=180,
                    what="the CR's job after the database came back",
                )
            finally:
                index.close()
            assert len(jobs) == 1, node.log()
        finally:
            node.stop()
    finally:
        database.stop()


def test_a_worker_killed_mid_job_is_replaced_and_the_study_gets_one_result(
    tmp_path: Path, test_model: Path
) -> None:
    config_path, config = node_config(tmp_path, test_model, node={"stable_seconds": 1})
    index = Index(load_settings(config_path).node.resolved_database_url)
    node = NodeProcess(config_path, tmp_path / "node.log", config["node"]["port"]).start()
    try:
        assert node.process is not None
        workers = wait_for(lambda: _workers(node.process.pid), timeout=60, what="a worker")
        ct = make_ct_series(tmp_path / "ct", n_slices=60)
        assert storescu(config["node"]["port"], ct, called="MEDGEMMA").returncode == 0
        running = wait_for(
            lambda: [j for j in index.jobs() if j.state == JobState.RUNNING],
            timeout=120,
            what="the CT job to start",
            every=0.02,
        )
        for pid in workers:
            os.kill(pid, signal.SIGKILL)
        (job,) = running
        done = wait_for(
            lambda: [j for j in index.jobs() if j.state == JobState.DONE],
            timeout=240,
            what="the job to finish on the restarted worker",
        )
        log = node.log(None)
    finally:
        node.stop()
    assert [j.id for j in done] == [job.id] and len(index.jobs()) == 1, log
    assert "died (exit -9); restarting it" in log
    # One report, from the second run: the first died before it wrote anything.
    reports = list((tmp_path / "node-data").rglob("*.dcm"))
    results = [p for p in reports if dcmread(p, stop_before_pixels=True).Modality == "SR"]
    assert len(results) == 1 and [str(results[0])] == done[0].result_paths
    index.close()


def test_a_failing_model_is_retried_with_doubling_waits_then_failed_visibly(
    tmp_path: Path, test_model: Path
) -> None:
    """A served model that can't be reached: each run raises; the job waits retry_seconds,
    then twice that, and fails after max_attempts with the reason, in ``jobs``,
    ``/api/studies`` and the audit trail."""
    dead = f"http://127.0.0.1:{free_port()}/v1"
    config_path, config = node_config(
        tmp_path,
        test_model,
        node={"stable_seconds": 1, "max_attempts": 3, "retry_seconds": 1},
        model={"engine": "openai", "url": dead, "retries": 0, "timeout_seconds": 5},
    )
    settings = load_settings(config_path)
    index = Index(settings.node.resolved_database_url)
    node = NodeProcess(config_path, tmp_path / "node.log", config["node"]["port"]).start()
    try:
        cr = make_cr_study(tmp_path / "in", patient_id="FAIL-1")
        assert storescu(config["node"]["port"], [cr], called="MEDGEMMA").returncode == 0
        (job,) = wait_for(
            lambda: [j for j in index.jobs() if j.state == JobState.FAILED],
            timeout=120,
            what="the job to fail",
        )
        status, studies = _get(f"http://127.0.0.1:{config['node']['http_port']}/api/studies")
    finally:
        node.stop()
    assert job.attempts == 3 and job.error and "cannot reach the model endpoint" in job.error
    listed = subprocess.run(
        [sys.executable, "-m", "node.cli", "jobs", "--config", str(config_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert f"{job.id}\tfailed\tcxr-report" in listed.stdout and "attempts=3" in listed.stdout
    assert status == 200
    (study,) = studies
    assert study["study_instance_uid"] == str(dcmread(cr, stop_before_pixels=True).StudyInstanceUID)
    assert "cannot reach the model endpoint" in json.dumps(study)
    audit_path = settings.node.resolved_audit_log
    assert audit_path is not None
    events = [json.loads(line) for line in audit_path.read_text().splitlines()]
    runs = [e for e in events if e["event"] == "model-run" and e["job_id"] == job.id]
    assert [run["attempt"] for run in runs] == [1, 2, 3], runs
    assert all("cannot reach the model endpoint" in run["error"] for run in runs)
    # The waits double: retry_seconds (1 s) after the first run, twice that after the second.
    at = [datetime.fromisoformat(run["time"].replace("Z", "+00:00")) for run in runs]
    assert (at[1] - at[0]).total_seconds() >= 1.0
    assert (at[2] - at[1]).total_seconds() >= 2.0


def _send_each(port: int, files: list[Path]) -> dict[str, int]:
    """C-STORE each file on one association; the status of each, by SOP Instance UID."""
    ae = AE(ae_title="MODALITY")
    for sop_class in {str(dcmread(p, stop_before_pixels=True).SOPClassUID) for p in files}:
        ae.add_requested_context(sop_class)
    assoc = ae.associate("127.0.0.1", port, ae_title="MEDGEMMA")
    assert assoc.is_established
    statuses: dict[str, int] = {}
    try:
        for path in files:
            ds = dcmread(path)
            status = assoc.send_c_store(ds)
            statuses[str(ds.SOPInstanceUID)] = int(status.Status) if "Status" in status else -1
    finally:
        assoc.release()
    return statuses


def test_a_full_disk_refuses_with_a700_leaves_nothing_half_written_and_serving_resumes(
    tmp_path: Path, test_model: Path
) -> None:
    """The node's data directory on a small tmpfs that really fills up."""
    disk = tmp_path / "disk"
    disk.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(disk)], check=True)
    try:
        config_path, config = node_config(
            tmp_path, test_model, node={"data_dir": str(disk / "data"), "stable_seconds": 600}
        )
        settings = load_settings(config_path)
        node = NodeProcess(config_path, tmp_path / "node.log", config["node"]["port"]).start()
        try:
            ct = make_ct_series(tmp_path / "ct", n_slices=10, marker=False)  # ~0.5 MB each
            # Leave about three slices' room, then send ten.
            free = os.statvfs(disk).f_bavail * os.statvfs(disk).f_frsize
            filler = disk / "filler"
            filler.write_bytes(b"\0" * max(0, free - 1_700_000))
            first = _send_each(config["node"]["port"], ct)
            acknowledged = {uid for uid, status in first.items() if status == 0x0000}
            refused = {uid for uid, status in first.items() if status != 0x0000}
            assert acknowledged and refused, first
            assert {first[uid] for uid in refused} == {0xA700}  # Out of Resources
            spool = settings.node.data_dir / "spool"
            assert not list(spool.rglob(".incoming-*"))  # no partial file left
            index = Index(settings.node.resolved_database_url)
            assert index.known_sop_uids() == acknowledged
            assert len(list(spool.rglob("*.dcm"))) == len(acknowledged)
            log = node.log(None)
            assert log.count(" not filed: ") == len(refused), log[-3000:]
            assert "Traceback" not in log
            # The fault goes away; the sender sends the rest again and the node takes them.
            filler.unlink()
            again = _send_each(
                config["node"]["port"],
                [
                    p
                    for p in ct
                    if str(dcmread(p, stop_before_pixels=True).SOPInstanceUID) in refused
                ],
            )
            assert set(again.values()) == {0x0000}, again
            assert index.known_sop_uids() == acknowledged | refused
            index.close()
        finally:
            node.stop()
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def test_a_moved_instance_no_retrieval_waits_for_is_refused_and_nothing_filed(
    tmp_path: Path, test_model: Path
) -> None:
    """A C-STORE naming this node as its move originator, with no prior retrieval running:
    refused with a reason in the log, neither spooled as new work nor cached as a prior."""
    config_path, config = node_config(tmp_path, test_model, node={"stable_seconds": 600})
    settings = load_settings(config_path)
    node = NodeProcess(config_path, tmp_path / "node.log", config["node"]["port"]).start()
    try:
        cr = make_cr_study(tmp_path / "in", patient_id="MOVED-1")
        ds = dcmread(cr)
        ae = AE(ae_title="PACS")
        ae.add_requested_context(ds.SOPClassUID)
        assoc = ae.associate("127.0.0.1", config["node"]["port"], ae_title="MEDGEMMA")
        assert assoc.is_established
        try:
            moved = assoc.send_c_store(ds, originator_aet="MEDGEMMA", originator_id=7)
        finally:
            assoc.release()
        log = node.log(None)
    finally:
        node.stop()
    assert int(moved.Status) == 0xA900, moved
    assert f"refused C-MOVE'd {ds.SOPInstanceUID} from PACS: no retrieval of study" in log
    index = Index(settings.node.resolved_database_url)
    assert index.known_sop_uids() == set()
    index.close()
    data = settings.node.data_dir
    assert not [p for p in data.rglob("*") if p.is_file() and p.suffix in (".dcm", ".tmp")]


def test_a_node_killed_mid_job_leaves_it_to_the_other_node_after_the_lease(
    tmp_path: Path, test_model: Path, postgres: Postgres
) -> None:
    """Two nodes on one PostgreSQL. The one running a CT job is SIGKILLed, worker and all:
    the other node takes the job when its lease runs out, and the study has one report."""
    url = postgres.fresh_database("lease_handover")
    first_path, first = node_config(
        tmp_path / "a", test_model, node={"database_url": url, "stable_seconds": 1}
    )
    second_path, second = node_config(
        tmp_path / "b", test_model, node={"database_url": url, "stable_seconds": 1}
    )
    index = Index(url)
    a = NodeProcess(first_path, tmp_path / "a.log", first["node"]["port"]).start()
    b: NodeProcess | None = None
    try:
        assert a.process is not None
        ct = make_ct_series(tmp_path / "ct", n_slices=60)
        assert storescu(first["node"]["port"], ct, called="MEDGEMMA").returncode == 0
        (job,) = wait_for(
            lambda: [j for j in index.jobs() if j.state == JobState.RUNNING],
            timeout=120,
            what="node A to start the CT job",
            every=0.05,
        )
        b = NodeProcess(second_path, tmp_path / "b.log", second["node"]["port"]).start()
        for pid in [*_children(a.process.pid), a.process.pid]:
            os.kill(pid, signal.SIGKILL)
        a.process.wait(timeout=30)
        (done,) = wait_for(
            lambda: [j for j in index.jobs() if j.state == JobState.DONE],
            timeout=240,
            what="node B to take the job after its lease",
        )
    finally:
        if b is not None:
            b.stop()
        a.stop()
    assert done.id == job.id and len(index.jobs()) == 1
    assert done.attempts == 2 and done.worker != job.worker
    reports = [
        p
        for p in tmp_path.rglob("*.dcm")
        if "ct" not in p.parts and dcmread(p, stop_before_pixels=True).Modality == "SR"
    ]
    assert [str(p) for p in reports] == done.result_paths
    index.close()


def test_healthz_says_503_while_no_worker_process_is_alive(
    tmp_path: Path, test_model: Path
) -> None:
    """Between a worker's death and its restart (the supervisor looks every second) the
    node has no worker: /healthz says so, then is healthy again."""
    config_path, config = node_config(tmp_path, test_model)
    node = NodeProcess(config_path, tmp_path / "node.log", config["node"]["port"]).start()
    health = f"http://127.0.0.1:{config['node']['http_port']}/healthz"
    try:
        assert node.process is not None
        seen: list[tuple[int, Any]] = []
        for _ in range(3):  # the gap lasts up to a second; tries again if it was too short
            # Ready, not just alive: a worker that dies before its model is loaded stops the
            # node (it could never work).
            wait_for(
                lambda: (answer := _get(health))[0] == 200 and answer[1]["workers_ready"] >= 1,
                timeout=180,
                what="a worker with its model loaded",
            )
            workers = _workers(node.process.pid)
            stop_at = time.monotonic() + 2.5
            for pid in workers:
                os.kill(pid, signal.SIGKILL)
            while time.monotonic() < stop_at:
                seen.append(_get(health))
                time.sleep(0.005)
            if any(code == 503 for code, _ in seen):
                break
        wait_for(lambda: _get(health)[0] == 200, timeout=180, what="healthy again")
    finally:
        node.stop()
    gaps = [body for code, body in seen if code == 503]
    assert gaps and all(b["workers_alive"] == 0 and b["database_reachable"] for b in gaps)


def test_a_task_process_that_dies_fails_only_its_attempt_and_the_job_is_retried(
    tmp_path: Path, test_model: Path, monkeypatch: Any
) -> None:
    """A job's task runs in a task process of the worker (node.pipeline.offload). Killed
    while the model holds its request, the process takes only that attempt with it: the
    job is retried in a new task process and the study gets its one report."""
    gate = tmp_path / "gate"
    monkeypatch.setenv("MEDGEMMA_STANDIN_SECONDS", "0.01,0.01")
    monkeypatch.setenv("MEDGEMMA_STANDIN_GATE", str(gate))
    config_path, config = node_config(
        tmp_path,
        test_model,
        node={"stable_seconds": 1, "retry_seconds": 0.5, "task_processes": True},
        outputs=["sr"],
    )
    node = NodeProcess(config_path, tmp_path / "node.log", config["node"]["port"]).start()
    index = Index(f"sqlite:///{tmp_path / 'node-data' / 'index.sqlite'}")
    try:
        assert node.process is not None
        cr = make_cr_study(tmp_path / "cr", patient_id="TASK-DIES")
        assert storescu(config["node"]["port"], [cr]).returncode == 0
        wait_for(
            lambda: "stand-in: holding 1 request(s)" in node.log(None),
            timeout=120,
            what="the model to hold the job's request",
        )
        (worker,) = _workers(node.process.pid)
        task_processes = _workers(worker)
        assert task_processes, "the worker runs its tasks in processes of its own"
        for pid in task_processes:
            os.kill(pid, signal.SIGKILL)
        wait_for(
            lambda: "task process running the cxr-report task died" in node.log(None),
            timeout=60,
            what="the worker to notice",
        )
        gate.touch()
        (done,) = wait_for(
            lambda: [j for j in index.jobs() if j.state == JobState.DONE],
            timeout=120,
            what="the job to be retried and done",
        )
    finally:
        node.stop()
    assert done.attempts == 2 and len(index.jobs()) == 1
    assert len(done.result_paths) == 1
    index.close()
