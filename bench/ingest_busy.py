"""Ingest while the model runs: the same 200-slice CT sent to a serving node, idle and busy.

The node is ``medgemma-node serve`` with the test checkpoint; "busy" means its worker
process is running a CT job (85 slices through the Gemma 3 processor and model) for the
whole transfer. Target: busy ingest within 1.5× of idle ingest.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import tempfile
from pathlib import Path

import yaml

from bench.ingest import _send
from fixtures.series import make_ct_series
from node.store.index import Index
from node.store.models import JobState
from node.testing.checkpoint import build_test_model
from tests.peers import NodeProcess, free_port, wait_for

TARGET = 1.5
SLICES = 200


def main() -> int:
    work = Path(tempfile.mkdtemp(prefix="mgn-bench-busy-"))
    try:
        model = build_test_model(work / "model")
        port = free_port()
        config = work / "node.yaml"
        config.write_text(
            yaml.safe_dump(
                {
                    "node": {
                        "port": port,
                        "http_port": free_port(),
                        "data_dir": str(work / "data"),
                        "stable_seconds": 1,
                    },
                    "model": {"engine": "test", "path": str(model)},
                }
            )
        )
        index_url = f"sqlite:///{work / 'data' / 'index.sqlite'}"
        node = NodeProcess(config, work / "node.log", port).start()
        try:
            wait_for(
                lambda: "loaded TEST MODEL" in node.log(tail=None),
                timeout=120,
                what="the worker to load the model",
            )
            idle_series = make_ct_series(work / "idle", n_slices=SLICES)
            idle = _send(port, "MEDGEMMA", idle_series)
            index = Index(index_url)
            # Several 85+-slice CT studies keep the worker busy through the measured transfer.
            for number in range(4):
                _send(port, "MEDGEMMA", make_ct_series(work / f"load{number}", n_slices=90))
            wait_for(
                lambda: any(j.state == JobState.RUNNING for j in index.jobs()),
                timeout=120,
                what="a CT job to be running",
            )
            busy_series = make_ct_series(work / "busy", n_slices=SLICES)
            busy = _send(port, "MEDGEMMA", busy_series)
            running_after = any(j.state == JobState.RUNNING for j in index.jobs())
            index.close()
        finally:
            node.stop()
        ratio = busy / idle
        ok = ratio <= TARGET and running_after
        print(
            f"ingest while the model runs: {SLICES} × 512² CT, {platform.node()}, "
            f"{os.cpu_count()} cores"
        )
        print(f"  node idle      {idle:6.2f} s")
        print(f"  node busy      {busy:6.2f} s  (a job still running at the end: {running_after})")
        print(f"  busy / idle    {ratio:5.2f}×  target ≤ {TARGET}×  {'PASS' if ok else 'FAIL'}")
        (Path("bench") / "results").mkdir(exist_ok=True)
        (Path("bench") / "results" / "ingest_busy.json").write_text(
            json.dumps(
                {"machine": platform.node(), "idle_s": idle, "busy_s": busy, "ratio": ratio},
                indent=2,
            )
            + "\n"
        )
        return 0 if ok else 1
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
