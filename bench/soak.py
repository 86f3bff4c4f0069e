"""Soak: eight senders at once for some minutes while the model runs.

``medgemma-node serve`` with the test checkpoint (``model.engine: test``) on SQLite; eight
threads, each its own calling AE, each start a study every 15 s for ``--seconds`` (150):
a chest CR (pydicom's RG1_UNCR, 1955×1841) and a 100-slice CT (pydicom's CT_small, 128²,
so that the worker keeps up on two cores), every study with new UIDs. Afterwards the node
is given time to finish every job. Checked, and the run fails when one doesn't hold:

- every instance the node acknowledged is in the index;
- every study has exactly one job, done, with exactly one report;
- the node's memory (resident set of the node and its worker processes, from /proc) and
  its open files at the end are within ``GROWTH`` of what they were after the first minute
  of load (the model loaded, the first studies through): flat, not climbing;
- a minute and more after the last job (``IDLE_SECONDS`` of the worker's), the worker has
  logged handing its kept memory back and the node holds no more memory than it did under
  load after that first minute.

Figures: instances/s acknowledged over the run, studies, memory and open files at start
and end, and once idle. Run: ``python -m bench.soak [--seconds N]``; writes
``bench/results/soak.json``.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import shutil
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from pydicom import Dataset, dcmread
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid
from pynetdicom import AE

from bench.machine import machine, process_children
from node.config import load_settings
from node.pipeline.memory import IDLE_SECONDS
from node.store.index import Index
from node.store.models import JobState
from node.testing.checkpoint import build_test_model
from tests.conftest import node_config
from tests.peers import NodeProcess, wait_for

SENDERS = 8
CT_SLICES = 100
# Each sender starts a study this often: about what the test model on two cores works off
# as they come (CT and CR alternating), so the run measures a node under steady load.
STUDY_EVERY_SECONDS = 15.0
WARM_UP_SECONDS = 60.0  # memory and open files are measured from here on
GROWTH = 1.25  # end / start allowed for memory; open files may grow by FD_SLACK
FD_SLACK = 8
RESULTS = Path("bench/results")


@dataclass
class Sender:
    number: int
    acknowledged: set[str] = field(default_factory=set)
    studies: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def _template(name: str) -> Dataset:
    found = get_testdata_file(name, download=False)
    if found is None:
        raise SystemExit(f"{name} is not installed (pip install pydicom-data)")
    return dcmread(str(found))


def _study(template: Dataset, count: int, number: int) -> list[Dataset]:
    """``count`` instances of one new study (one series) made from ``template``."""
    study, series = generate_uid(), generate_uid()
    instances = []
    for k in range(count):
        ds = copy.deepcopy(template)  # Dataset.copy() is shallow: UIDs would be shared
        ds.PatientID = f"MGN-SOAK-{number}"
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.SOPInstanceUID = generate_uid()
        ds.InstanceNumber = k + 1
        if "ImagePositionPatient" in ds:
            position = [float(v) for v in ds.ImagePositionPatient]
            z = f"{position[2] + 5.0 * k:.2f}"  # DS: at most 16 characters
            ds.ImagePositionPatient = [f"{position[0]:.2f}", f"{position[1]:.2f}", z]
        instances.append(ds)
    return instances


def _send(sender: Sender, port: int, until: float, templates: dict[str, Dataset]) -> None:
    try:
        _send_studies(sender, port, until, templates)
    except Exception as e:  # a sender that dies is a failed run, not a shorter one
        sender.errors.append(f"sender {sender.number} stopped: {type(e).__name__}: {e}")


def _send_studies(sender: Sender, port: int, until: float, templates: dict[str, Dataset]) -> None:
    ae = AE(ae_title=f"SOAK{sender.number}")
    for template in templates.values():
        ae.add_requested_context(template.SOPClassUID, template.file_meta.TransferSyntaxUID)
    kinds = ["cr", "ct"]
    turn = sender.number
    while time.monotonic() < until:
        next_study = time.monotonic() + STUDY_EVERY_SECONDS
        kind = kinds[turn % 2]
        turn += 1
        instances = _study(templates[kind], 1 if kind == "cr" else CT_SLICES, sender.number)
        assoc = ae.associate("127.0.0.1", port, ae_title="MEDGEMMA")
        if not assoc.is_established:
            sender.errors.append("association refused")
            continue
        try:
            for ds in instances:
                status = assoc.send_c_store(ds)
                if "Status" in status and int(status.Status) == 0x0000:
                    sender.acknowledged.add(str(ds.SOPInstanceUID))
                else:
                    sender.errors.append(f"status {status.get('Status')}")
        finally:
            assoc.release()
        sender.studies.append(str(instances[0].StudyInstanceUID))
        time.sleep(max(0.0, min(next_study, until) - time.monotonic()))


def _tree(pid: int) -> list[int]:
    """``pid`` and its descendants, from /proc."""
    children = process_children()
    found, queue = [], [pid]
    while queue:
        current = queue.pop()
        found.append(current)
        queue += children.get(current, [])
    return found


def _usage(pid: int) -> dict[str, int]:
    """Resident memory of the node's process tree (MiB) and the main process's open files."""
    rss_kib = 0
    for member in _tree(pid):
        try:
            for line in Path(f"/proc/{member}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    rss_kib += int(line.split()[1])
        except OSError:
            continue
    return {"rss_mib": rss_kib // 1024, "open_files": len(os.listdir(f"/proc/{pid}/fd"))}


def main() -> int:
    arguments = argparse.ArgumentParser(description=__doc__)
    arguments.add_argument("--seconds", type=float, default=150.0, help="how long to send")
    seconds = arguments.parse_args().seconds
    work = Path(tempfile.mkdtemp(prefix="mgn-bench-soak-"))
    try:
        model = build_test_model(work / "model")
        config, settings = node_config(
            work,
            model,
            localization={"enabled": False},
            outputs=["sr"],
        )
        port = settings["node"]["port"]
        node = NodeProcess(config, work / "node.log", port).start()
        assert node.process is not None
        templates = {"cr": _template("RG1_UNCR.dcm"), "ct": _template("CT_small.dcm")}
        senders = [Sender(number) for number in range(SENDERS)]
        started = time.monotonic()
        until = started + seconds
        threads = [
            threading.Thread(target=_send, args=(s, port, until, templates)) for s in senders
        ]
        try:
            for thread in threads:
                thread.start()
            time.sleep(min(WARM_UP_SECONDS, seconds / 2))
            first = _usage(node.process.pid)
            for thread in threads:
                thread.join()
            sent_seconds = time.monotonic() - started
            index = Index(load_settings(config).node.resolved_database_url)
            studies = {uid for s in senders for uid in s.studies}

            def finished() -> bool:
                jobs = index.jobs()
                return len({j.study_id for j in jobs}) >= len(studies) and all(
                    j.state in (JobState.DONE, JobState.FAILED) for j in jobs
                )

            wait_for(finished, timeout=1800, what="every study's job to finish", every=2.0)
            last = _usage(node.process.pid)
            time.sleep(IDLE_SECONDS + 15)  # the worker's idle minute and its next check
            idle = _usage(node.process.pid)
            acknowledged = {uid for s in senders for uid in s.acknowledged}
            missing = acknowledged - index.known_sop_uids()
            jobs = index.jobs()
            per_study: dict[int, list[object]] = {}
            for job in jobs:
                per_study.setdefault(job.study_id, []).append(job)
            not_one = [
                index.study(study_id).study_uid
                for study_id, js in per_study.items()
                if len(js) != 1
                or js[0].state != JobState.DONE  # type: ignore[attr-defined]
                or len(js[0].result_paths or []) != 1  # type: ignore[attr-defined]
            ]
            index.close()
        finally:
            node.stop()
        errors = [e for s in senders for e in s.errors]
        flat = (
            last["rss_mib"] <= GROWTH * first["rss_mib"]
            and last["open_files"] <= first["open_files"] + FD_SLACK
        )
        # The worker says when it hands memory back; holding no more than under load
        # alone could also pass on a node that kept little.
        handed_back = (
            idle["rss_mib"] <= first["rss_mib"]
            and "freed memory handed back" in (work / "node.log").read_text()
        )
        report = {
            "machine": machine(),
            "senders": SENDERS,
            "seconds_sending": round(sent_seconds, 1),
            "studies": len(studies),
            "instances_acknowledged": len(acknowledged),
            "instances_per_second": round(len(acknowledged) / sent_seconds, 1),
            "sender_errors": len(errors),
            "missing_from_index": len(missing),
            "studies_without_exactly_one_report": len(not_one),
            "after_warm_up": first,
            "at_end": last,
            "after_idle": idle,
            "flat": flat,
            "handed_back": handed_back,
        }
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / "soak.json").write_text(json.dumps(report, indent=2) + "\n")
        print(json.dumps(report, indent=2))
        ok = (
            not missing
            and not not_one
            and not errors
            and flat
            and handed_back
            and len(studies) >= 2 * SENDERS
        )
        print("soak:", "PASS" if ok else "FAIL")
        return 0 if ok else 1
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
