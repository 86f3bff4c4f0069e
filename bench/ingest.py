"""Ingest benchmark: a 200-slice 512×512 CT sent by DCMTK storescu to several SCPs, side by side.

Targets (issue 2): the node receives, fsyncs and indexes within 1.5× of a bare pynetdicom
SCP that only fsyncs, and within 1.5× of Orthanc. DCMTK's storescp is the far mark.
Every peer runs with TCP_NODELAY=1 (DCMTK and Orthanc stall ~40 ms per instance without it).
Run: ``make bench``. Exit status 1 when a target is missed.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from fixtures.series import make_ct_series
from tests.peers import NODELAY_ENV, Orthanc, free_port, port_open, wait_for

SLICES = 200
ROUNDS = 3
TARGET = 1.5


def _send(port: int, called: str, files: list[Path]) -> float:
    started = time.perf_counter()
    result = subprocess.run(
        ["storescu", "-aec", called, "127.0.0.1", str(port), *map(str, files)],
        capture_output=True,
        text=True,
        env=NODELAY_ENV,
        check=False,
    )
    elapsed = time.perf_counter() - started
    if result.returncode != 0:
        raise RuntimeError(f"storescu to {called} failed: {result.stderr[-2000:]}")
    return elapsed


def _process_peer(command: list[str], port: int) -> Callable[[], subprocess.Popen[bytes]]:
    def start() -> subprocess.Popen[bytes]:
        process = subprocess.Popen(
            command, env=NODELAY_ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        wait_for(lambda: port_open(port), timeout=30, what=f"{command[0]} on {port}")
        return process

    return start


def measure(
    name: str,
    called: str,
    port: int,
    start: Callable[[], object],
    stop: Callable[[object], None],
    files: list[Path],
) -> float:
    times = []
    for _ in range(ROUNDS):
        handle = start()
        try:
            times.append(_send(port, called, files))
        finally:
            stop(handle)
    best = min(times)
    print(f"  {name:<28} {best:6.2f} s  ({SLICES / best:5.0f} instances/s, best of {ROUNDS})")
    return best


def main() -> int:
    work = Path(tempfile.mkdtemp(prefix="mgn-bench-"))
    try:
        files = make_ct_series(work / "ct", n_slices=SLICES, source="693_UNCR.dcm")
        print(
            f"ingest: {SLICES} × 512² CT from storescu, {platform.node()}, "
            f"{os.cpu_count()} cores, python {platform.python_version()}"
        )
        py = sys.executable
        results: dict[str, float] = {}

        def kill(process: object) -> None:
            assert isinstance(process, subprocess.Popen)
            process.kill()
            process.wait()

        port = free_port()
        results["storescp (DCMTK)"] = measure(
            "storescp (DCMTK, no fsync)",
            "ANY",
            port,
            lambda: _process_peer(
                ["storescp", "-od", str(_fresh_dir(work / "storescp")), str(port)], port
            )(),
            kill,
            files,
        )
        port = free_port()
        results["bare"] = measure(
            "bare pynetdicom + fsync",
            "BARE",
            port,
            lambda: _process_peer(
                [py, "-m", "bench.scp_servers", "bare", str(port), str(_fresh_dir(work / "bare"))],
                port,
            )(),
            kill,
            files,
        )
        port = free_port()
        results["node"] = measure(
            "medgemma-node ingest",
            "MEDGEMMA",
            port,
            lambda: _process_peer(
                [py, "-m", "bench.scp_servers", "node", str(port), str(_fresh_dir(work / "node"))],
                port,
            )(),
            kill,
            files,
        )

        def start_orthanc() -> Orthanc:
            return Orthanc(_fresh_dir(work / "orthanc")).start()

        def stop_orthanc(pacs: object) -> None:
            assert isinstance(pacs, Orthanc)
            pacs.stop()

        results["orthanc"] = min(
            _timed_orthanc(start_orthanc, stop_orthanc, files) for _ in range(ROUNDS)
        )
        print(f"  {'Orthanc':<28} {results['orthanc']:6.2f} s")

        vs_bare = results["node"] / results["bare"]
        vs_orthanc = results["node"] / results["orthanc"]
        verdicts = {
            "node / bare pynetdicom+fsync": (vs_bare, vs_bare <= TARGET),
            "node / Orthanc": (vs_orthanc, vs_orthanc <= TARGET),
        }
        for label, (ratio, ok) in verdicts.items():
            print(f"  {label:<28} {ratio:5.2f}×  target ≤ {TARGET}×  {'PASS' if ok else 'FAIL'}")
        (Path("bench") / "results").mkdir(exist_ok=True)
        (Path("bench") / "results" / "ingest.json").write_text(
            json.dumps(
                {
                    "machine": platform.node(),
                    "cores": os.cpu_count(),
                    "seconds": results,
                    "ratios": {k: v[0] for k, v in verdicts.items()},
                },
                indent=2,
            )
            + "\n"
        )
        return 0 if all(ok for _, ok in verdicts.values()) else 1
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _fresh_dir(path: Path) -> Path:
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


def _timed_orthanc(
    start: Callable[[], Orthanc], stop: Callable[[object], None], files: list[Path]
) -> float:
    pacs = start()
    try:
        return _send(pacs.dicom_port, pacs.aet, files)
    finally:
        stop(pacs)


if __name__ == "__main__":
    raise SystemExit(main())
