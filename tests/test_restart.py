"""A node killed with SIGKILL mid-ingest keeps every acknowledged instance, then does the work."""

from __future__ import annotations

import threading
from pathlib import Path

from pydicom import dcmread
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage  # type: ignore[attr-defined]

from fixtures.series import make_ct_series
from node.config import load_settings
from node.store.index import Index
from node.store.models import JobState
from tests.conftest import node_config
from tests.peers import NodeProcess, wait_for


def _send_until_killed(
    port: int, files: list[Path], node: NodeProcess, kill_after: int
) -> set[str]:
    """Send ``files`` one C-STORE at a time; SIGKILL the node after ``kill_after`` successes."""
    acknowledged: set[str] = set()
    ae = AE(ae_title="MODALITY")
    ae.add_requested_context(CTImageStorage)
    assoc = ae.associate("127.0.0.1", port, ae_title="MEDGEMMA")
    assert assoc.is_established
    killer: threading.Thread | None = None
    for path in files:
        ds = dcmread(path)
        status = assoc.send_c_store(ds)
        if not assoc.is_established or not status or "Status" not in status:
            break
        if int(status.Status) == 0x0000:
            acknowledged.add(str(ds.SOPInstanceUID))
        if len(acknowledged) == kill_after and killer is None:
            # kill from another thread, so the node dies while the next instances are in flight
            killer = threading.Thread(target=node.kill)
            killer.start()
    if killer is not None:
        killer.join()
    if assoc.is_established:
        assoc.abort()
    return acknowledged


def test_sigkill_mid_ingest_loses_no_acknowledged_instance(
    tmp_path: Path, test_model: Path
) -> None:
    config_path, config = node_config(tmp_path, test_model, node={"stable_seconds": 2})
    port = config["node"]["port"]
    files = make_ct_series(tmp_path / "ct", n_slices=40)
    node = NodeProcess(config_path, tmp_path / "node.log", port).start()
    acknowledged = _send_until_killed(port, files, node, kill_after=15)
    assert 15 <= len(acknowledged) < len(files)

    settings = load_settings(config_path)
    node.start()
    try:
        index = Index(settings.node.resolved_database_url)
        assert acknowledged <= index.known_sop_uids()
        # the modality sends the rest again, as a PACS retrying its route would
        remaining = [p for p in files if str(dcmread(p).SOPInstanceUID) not in acknowledged]
        _send_until_killed(port, remaining, node, kill_after=len(files) + 1)
        assert len(index.known_sop_uids()) == len(files)

        def finished() -> list[object]:
            return [j for j in index.jobs() if j.state in (JobState.DONE, JobState.FAILED)]

        jobs = wait_for(finished, timeout=180, what="the CT job to finish")
    finally:
        node.stop()
    assert [j.state for j in jobs] == [JobState.DONE], node.log()
    job = index.jobs()[-1]
    assert job.task == "ct-volume"
    assert job.record is not None and job.record["slices_sent"] == len(files)
    assert job.result_paths and Path(job.result_paths[0]).exists()
    index.close()
