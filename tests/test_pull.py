"""Pulling studies from the PACS: nobody pushes; the node fetches from a real Orthanc.

``POST /api/studies/{uid}/process`` (WADO-RS) and ``medgemma-node process`` (C-MOVE to the
node's own SCP, C-GET) against ``medgemma-node serve``; the failures (unknown study, PACS
down, no PACS configured); the watch polling Orthanc by C-FIND across a restart, a study
that grows, and an outage that is logged once.
"""

from __future__ import annotations

import datetime
import json
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
import requests
import yaml

from fixtures.series import make_cr_study
from node.audit import AuditEvent, AuditLog
from node.config import ConfigError, Settings, load_settings, parse_settings
from node.http.app import NodeView, WorkerCounts, create_app
from node.http.server import HttpServer
from node.store.index import Index
from node.store.ingest import Ingest
from node.store.models import JobState
from node.store.spool import Spool
from node.studies.pull import (
    PullUnavailable,
    held_instances,
    search_instances,
    search_studies,
)
from node.studies.watch import watched_modalities
from tests.conftest import node_config
from tests.peers import NODE_BIN, REPO, NodeProcess, Orthanc, free_port, wait_for

TODAY = datetime.date.today().strftime("%Y%m%d")


def _pacs(orthanc: Orthanc, *, dicomweb: bool, **extra: Any) -> dict[str, Any]:
    return {
        "ae_title": orthanc.aet,
        "host": "127.0.0.1",
        "port": orthanc.dicom_port,
        "dicomweb_url": orthanc.dicomweb_url if dicomweb else None,
        **extra,
    }


def _uid(path: Path) -> str:
    return str(pydicom.dcmread(path, stop_before_pixels=True).StudyInstanceUID)


def _pulls(data_dir: Path, study_uid: str | None = None) -> list[dict[str, Any]]:
    audit = data_dir / "audit.jsonl"
    if not audit.exists():
        return []
    events = [json.loads(line) for line in audit.read_text().splitlines()]
    return [
        e
        for e in events
        if e["event"] == AuditEvent.STUDY_PULLED
        and (study_uid is None or e["study_uid"] == study_uid)
    ]


def _process(url: str, study_uid: str) -> requests.Response:
    return requests.post(f"{url}/api/studies/{study_uid}/process", timeout=120)


def _cli_process(config: Path, study_uid: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(NODE_BIN), "process", study_uid, "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
        check=False,
    )


def _study_json(url: str, study_uid: str) -> dict[str, Any] | None:
    response = requests.get(f"{url}/api/studies", timeout=10)
    response.raise_for_status()
    return next((s for s in response.json() if s["study_instance_uid"] == study_uid), None)


def _staged(data_dir: Path) -> list[Path]:
    """Whatever a pull left in the prior cache, its staging place (nothing, when it's done)."""
    priors = data_dir / "priors"
    return sorted(priors.rglob("*")) if priors.exists() else []


def test_process_by_wado_c_move_and_c_get_and_its_failures(
    tmp_path: Path, test_model: Path, orthanc: Orthanc
) -> None:
    # 30 s of quiet would start nothing within this test: the pull itself routes the study.
    sections: dict[str, Any] = {
        "node": {"stable_seconds": 30},
        "priors": {"enabled": False},
        "localization": {"enabled": False},
    }
    config_path, config = node_config(
        tmp_path, test_model, pacs=_pacs(orthanc, dicomweb=True), **sections
    )
    port, data_dir = config["node"]["port"], Path(config["node"]["data_dir"])
    url = f"http://127.0.0.1:{config['node']['http_port']}"
    # The CLI pulls by DIMSE with the same node (data directory, AE) behind it.
    by_move, by_get = tmp_path / "c-move.yaml", tmp_path / "c-get.yaml"
    for path, method in ((by_move, "c-move"), (by_get, "c-get")):
        path.write_text(
            yaml.safe_dump({**config, "pacs": _pacs(orthanc, dicomweb=False, retrieve=method)})
        )
    # A node AE the PACS doesn't know as a C-MOVE destination: found, then refused.
    stranger = tmp_path / "stranger.yaml"
    stranger.write_text(
        yaml.safe_dump(
            {
                **config,
                "node": {**config["node"], "ae_title": "STRANGER"},
                "pacs": _pacs(orthanc, dicomweb=False, retrieve="c-move"),
            }
        )
    )
    orthanc.start(node_aet="MEDGEMMA", node_port=port)  # known for C-MOVE; routes nothing
    studies = tmp_path / "studies"
    wado, moved, got, never = (
        make_cr_study(studies, patient_id=f"PULL-{name}")
        for name in ("WADO", "MOVE", "GET", "NEVER")
    )
    for path in (wado, moved, got, never):
        orthanc.upload(path)
    wado_uid, moved_uid, got_uid, never_uid = _uid(wado), _uid(moved), _uid(got), _uid(never)
    node = NodeProcess(config_path, tmp_path / "node.log", port).start()
    index = Index(load_settings(config_path).node.resolved_database_url)
    try:
        # HTTP, WADO-RS: filed and routed at once, the job runs and reports.
        answer = _process(url, wado_uid)
        assert answer.status_code == 202, answer.text
        body = answer.json()
        assert body["study_instance_uid"] == wado_uid
        assert (body["instances"], body["new_instances"], body["method"]) == (1, 1, "wado")
        assert body["state"] == "routed" and len(body["jobs"]) == 1
        (job_id,) = body["jobs"]
        done = wait_for(
            lambda: [j for j in index.jobs(wado_uid) if j.state == JobState.DONE],
            timeout=120,
            what="the pulled study's job to be done",
        )
        assert [j.id for j in done] == [job_id]
        assert done[0].result_paths and "pacs" in done[0].delivered_to
        listed = _study_json(url, wado_uid)
        assert listed is not None and [j["id"] for j in listed["jobs"]] == [job_id]
        # Filed as if the PACS had sent it.
        assert [s["sender"] for s in listed["series"]] == [orthanc.aet]
        assert _staged(data_dir) == []

        # Again: the PACS now also holds the node's own report, which is filed but is no
        # new work; the same job stands. A third time everything is a duplicate.
        results = len(done[0].result_paths)
        for new in (results, 0):
            again = _process(url, wado_uid)
            assert again.status_code == 202, again.text
            assert again.json()["jobs"] == [job_id]
            assert again.json()["instances"] == 1 + results
            assert (again.json()["new_instances"], again.json()["state"]) == (new, "routed")
        assert [j.id for j in index.jobs(wado_uid)] == [job_id]

        unknown = "1.2.826.0.1.3680043.8.498.999"
        missing = _process(url, unknown)
        assert missing.status_code == 404
        assert unknown in missing.json()["detail"]
        wildcard = _process(url, "1.2.*")
        assert wildcard.status_code == 422 and "1.2.*" in wildcard.json()["detail"]

        # CLI, C-MOVE: Orthanc sends the study to the serving node's SCP; filed as received.
        cli = _cli_process(by_move, moved_uid)
        assert cli.returncode == 0, cli.stderr
        assert f"of study {moved_uid} by c-move (1 new)" in cli.stdout
        # CLI, C-GET: the instances come back on the CLI's own association.
        cli = _cli_process(by_get, got_uid)
        assert cli.returncode == 0, cli.stderr
        assert f"of study {got_uid} by c-get (1 new)" in cli.stdout
        for study_uid in (moved_uid, got_uid):
            (job,) = index.jobs(study_uid)
            assert job.task == "cxr-report"
            listed = _study_json(url, study_uid)
            assert listed is not None
            assert [s["sender"] for s in listed["series"]] == [orthanc.aet]
        assert _staged(data_dir) == []
        cli = _cli_process(by_get, unknown)
        assert cli.returncode == 1 and unknown in cli.stderr
        # The PACS has the study but won't send it: nothing filed, nothing staged.
        cli = _cli_process(stranger, never_uid)
        assert cli.returncode == 1 and f"PACS {orthanc.aet}" in cli.stderr
        assert never_uid in cli.stderr and "failed sub-operation" in cli.stderr
        assert held_instances(index, never_uid) is None
        assert _staged(data_dir) == []

        # The PACS goes away: 503 naming it, nothing filed, nothing staged.
        orthanc.stop()
        down = _process(url, never_uid)
        assert down.status_code == 503
        assert f"PACS {orthanc.aet}" in down.json()["detail"]
        assert never_uid in down.json()["detail"]
        cli = _cli_process(by_move, never_uid)
        assert cli.returncode == 1 and f"PACS {orthanc.aet}" in cli.stderr
        assert held_instances(index, never_uid) is None
        assert _staged(data_dir) == []
    except TimeoutError:
        pytest.fail(f"timed out; node log:\n{node.log()}")
    finally:
        node.stop()
        index.close()

    pulls = _pulls(data_dir)
    assert [(p["study_uid"], p["via"], p["method"], p["outcome"]) for p in pulls] == [
        (wado_uid, "http", "wado", "ok"),
        (wado_uid, "http", "wado", "ok"),
        (wado_uid, "http", "wado", "ok"),
        (unknown, "http", "wado", "not-found"),
        (moved_uid, "cli", "c-move", "ok"),
        (got_uid, "cli", "c-get", "ok"),
        (unknown, "cli", "c-get", "not-found"),
        (never_uid, "cli", "c-move", "failed"),
        (never_uid, "http", "wado", "failed"),
        (never_uid, "cli", "c-move", "failed"),
    ]
    assert pulls[0]["instances"] == 1 and pulls[0]["job_ids"] == [job_id]
    assert pulls[4]["user"]  # the CLI names who asked
    assert f"PACS {orthanc.aet}" in pulls[-1]["error"]
    # Studies by UID only: no patient ID in the log or the audit trail.
    text = (tmp_path / "node.log").read_text() + (data_dir / "audit.jsonl").read_text()
    assert "PULL-" not in text


def test_watch_pulls_what_the_pacs_gets_once_across_restarts_and_outages(
    tmp_path: Path, test_model: Path, orthanc: Orthanc
) -> None:
    watch = {"enabled": True, "modalities": ["CR"], "interval_seconds": 1, "lookback_days": 1}
    config_path, config = node_config(
        tmp_path,
        test_model,
        node={"stable_seconds": 30},
        pacs=_pacs(orthanc, dicomweb=False, watch=watch),  # C-FIND, C-MOVE
        priors={"enabled": False},
        localization={"enabled": False},
    )
    port, data_dir = config["node"]["port"], Path(config["node"]["data_dir"])
    orthanc.start(node_aet="MEDGEMMA", node_port=port)
    studies = tmp_path / "studies"
    old = make_cr_study(studies, patient_id="WATCH-OLD", study_date="20200101")
    first = make_cr_study(studies, patient_id="WATCH-1", study_date=TODAY)
    orthanc.upload(old)
    orthanc.upload(first)
    old_uid, first_uid = _uid(old), _uid(first)
    node = NodeProcess(config_path, tmp_path / "node.log", port).start()
    index = Index(load_settings(config_path).node.resolved_database_url)

    def done_jobs(study_uid: str) -> list[int]:
        return [j.id for j in index.jobs(study_uid) if j.state == JobState.DONE]

    try:
        (first_job,) = wait_for(
            lambda: done_jobs(first_uid), timeout=120, what="the watched study's job to be done"
        )
        # Its report went to the PACS: Orthanc now counts more instances than the node
        # holds, all of them the node's own results; no pull again, across a restart.
        node.stop()
        node.start()
        second = make_cr_study(studies, patient_id="WATCH-2", study_date=TODAY)
        orthanc.upload(second)
        second_uid = _uid(second)
        wait_for(lambda: done_jobs(second_uid), timeout=120, what="the second study's job")
        assert [j.id for j in index.jobs(first_uid)] == [first_job]
        assert len(_pulls(data_dir, first_uid)) == 1

        # The first study gains an instance at the PACS: pulled again, and run again.
        grown = make_cr_study(studies, patient_id="WATCH-1", study_uid=first_uid, study_date=TODAY)
        orthanc.upload(grown)
        wait_for(
            lambda: [j for j in done_jobs(first_uid) if j != first_job],
            timeout=120,
            what="a new job for the grown study",
        )
        # New to the node: the added image, and the report it sent the PACS the first time.
        reported = len(index.job(first_job).result_paths or [])
        first_pulls = _pulls(data_dir, first_uid)
        assert [(p["via"], p["method"], p["new_instances"]) for p in first_pulls] == [
            ("watch", "c-move", 1),
            ("watch", "c-move", 1 + reported),
        ]

        # An outage: one line when the watch notices, then polls after 2 s and 4 s say
        # nothing (nor does pynetdicom); one line when the PACS answers again.
        orthanc.stop()
        wait_for(
            lambda: f"watch: PACS {orthanc.aet}:" in node.log(tail=None),
            timeout=30,
            what="the watch to notice the PACS is down",
        )
        noticed = len(node.log(tail=None))
        time.sleep(3)  # the outage itself: long enough for a second failed poll
        orthanc.launch(orthanc.workdir / "orthanc.json")
        wait_for(
            lambda: "answers again" in node.log(tail=None),
            timeout=30,
            what="the watch to see the PACS back",
        )
        log = node.log(tail=None)
    except TimeoutError:
        pytest.fail(f"timed out; node log:\n{node.log()}")
    finally:
        node.stop()
        index.close()
        orthanc.stop()

    down_lines = [line for line in log.splitlines() if f"watch: PACS {orthanc.aet}:" in line]
    assert len(down_lines) == 1, down_lines
    assert "WARNING" in down_lines[0] and "C-FIND" in down_lines[0]
    (back,) = [line for line in log.splitlines() if "answers again" in line]
    failed_polls = re.search(r"after (\d+) failed poll", back)
    assert failed_polls is not None and int(failed_polls.group(1)) >= 2
    # Between the first failure and the PACS's return, nobody logged anything about it.
    outage = log[noticed : log.index(back)]
    assert "ERROR" not in outage and "WARNING" not in outage, outage
    # Outside the lookback window: never pulled. Nothing pulled more than said above.
    assert _pulls(data_dir, old_uid) == []
    assert len(_pulls(data_dir, second_uid)) == 1
    assert len(_pulls(data_dir, first_uid)) == 2
    assert "WATCH-" not in log


def test_search_agrees_over_qido_and_c_find(tmp_path: Path, orthanc: Orthanc) -> None:
    orthanc.start()
    studies = tmp_path / "studies"
    today = make_cr_study(studies, study_date=TODAY)
    study_uid = _uid(today)
    same_study = make_cr_study(studies, study_uid=study_uid, study_date=TODAY)
    old = make_cr_study(studies, study_date="20200101")
    for path in (today, same_study, old):
        orthanc.upload(path)
    sops = {
        str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in (today, same_study)
    }
    for dicomweb in (True, False):
        settings = parse_settings(
            yaml.safe_dump({"pacs": _pacs(orthanc, dicomweb=dicomweb)}), "test"
        )
        assert settings.pacs is not None
        recent = {"StudyDate": f"{TODAY}-", "ModalitiesInStudy": "CR"}
        found = search_studies(settings.pacs, "MEDGEMMA", recent)
        assert [(s.study_uid, s.instances) for s in found] == [(study_uid, 2)]
        assert (
            search_studies(settings.pacs, "MEDGEMMA", {**recent, "ModalitiesInStudy": "CT"}) == []
        )
        assert search_instances(settings.pacs, "MEDGEMMA", study_uid) == sops
    orthanc.stop()
    down = parse_settings(yaml.safe_dump({"pacs": _pacs(orthanc, dicomweb=False)}), "test")
    assert down.pacs is not None
    with pytest.raises(PullUnavailable, match=f"PACS {orthanc.aet} at 127.0.0.1"):
        search_studies(down.pacs, "MEDGEMMA", {"StudyInstanceUID": study_uid})


def test_watched_modalities_default_to_those_the_rules_name() -> None:
    pacs = {"ae_title": "PACS", "host": "127.0.0.1", "port": 104}
    defaults = parse_settings(yaml.safe_dump({"pacs": pacs}), "test")
    assert watched_modalities(defaults) == ["CR", "CT", "DOC", "DX", "MR"]
    chosen = parse_settings(
        yaml.safe_dump({"pacs": {**pacs, "watch": {"modalities": ["SM", "CR", "SM"]}}}), "test"
    )
    assert watched_modalities(chosen) == ["CR", "SM"]
    with pytest.raises(ConfigError, match="retrieve: wado needs dicomweb_url"):
        parse_settings(yaml.safe_dump({"pacs": {**pacs, "retrieve": "wado"}}), "test")


@pytest.fixture
def pacs_less_app(tmp_path: Path) -> Iterator[str]:
    """The node's HTTP app with no pacs configured, served in this process."""
    settings = Settings()
    index = Index(f"sqlite:///{tmp_path / 'index.sqlite'}")
    view = NodeView(
        index,
        Ingest(Spool(tmp_path / "spool"), index, reopen_on_late=True),
        lambda: WorkerCounts(configured=1, alive=1, ready=1),
        AuditLog(tmp_path / "audit.jsonl"),
    )
    assert settings.pacs is None and view.puller is None
    server = HttpServer(create_app(view), free_port())
    server.start()
    try:
        yield f"http://127.0.0.1:{server.port}"
    finally:
        server.stop()
        index.close()


def test_process_without_a_pacs_is_a_conflict(pacs_less_app: str, tmp_path: Path) -> None:
    study_uid = "1.2.826.0.1.3680043.8.498.12345"
    answer = _process(pacs_less_app, study_uid)
    assert answer.status_code == 409
    assert "no pacs is configured" in answer.json()["detail"] and study_uid in answer.text
    config = tmp_path / "no-pacs.yaml"
    config.write_text(yaml.safe_dump({"node": {"data_dir": str(tmp_path / "data")}}))
    cli = _cli_process(config, study_uid)
    assert cli.returncode == 1 and "no pacs is configured" in cli.stderr
