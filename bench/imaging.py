"""Imaging benchmark: CT series from files to model-ready images, against SimpleITK.

(a) Speed: a 300-slice 512×512 CT (the real ``693_UNCR.dcm`` slice, re-positioned)
    from files to the ≤ 85 windowed RGB slices (read, sort, HU, sample, window),
    against ``sitk.ImageSeriesReader`` only reading the same files; both in one
    run, best of 3 each, interleaved. Target: ours ≤ 0.5× SimpleITK's time.
(b) Memory: a 1000-slice 512×512 CT through ``series_to_volume_input`` in a fresh
    subprocess; the peak RSS growth over the baseline after imports must stay
    within 2× the int16 volume (1000 × 512 × 512 × 2 bytes = 500 MiB → 1000 MiB).
    ``series_to_sitk`` (which holds the whole volume) is measured too, for the record.

Run: ``python -m bench.imaging``. Writes ``bench/results/imaging.json``; exit status 1
when a target is missed.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SPEED_SLICES = 300
MEMORY_SLICES = 1000
ROUNDS = 3
SPEED_TARGET = 0.5  # ours / SimpleITK
MEMORY_FACTOR = 2.0  # × the int16 volume
MIB = 1024 * 1024


def _status_mib(field: str) -> float:
    """VmRSS / VmHWM of this process from /proc (kB)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def _reset_peak() -> bool:
    """Reset the peak-RSS mark (Linux ≥ 4.0); False where that isn't possible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def _peak_mib() -> float:
    try:
        return _status_mib("VmHWM")
    except (OSError, RuntimeError):
        # Linux reports ru_maxrss in KiB.
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _child(kind: str, folder: str) -> None:
    """Runs in a fresh interpreter: peak RSS growth of one call, as JSON on stdout."""
    import SimpleITK  # noqa: F401  (imports count in the baseline, not the growth)

    from node.imaging.volume import series_to_sitk, series_to_volume_input

    paths = sorted(Path(folder).glob("*.dcm"))
    # The import phase may have peaked higher than it sits now: reset the mark, so
    # the growth is this call's peak over the resident size it started from.
    reset = _reset_peak()
    baseline = _status_mib("VmRSS") if reset else _peak_mib()
    started = time.perf_counter()
    if kind == "volume":
        result = series_to_volume_input(paths)
        produced = len(result.images)
    else:
        image = series_to_sitk(paths)
        produced = image.GetSize()[2]
    elapsed = time.perf_counter() - started
    peak = _peak_mib()
    print(
        json.dumps(
            {
                "baseline_mib": baseline,
                "peak_mib": peak,
                "growth_mib": peak - baseline,
                "seconds": elapsed,
                "produced": produced,
                "peak_reset": reset,
            }
        )
    )


def _measure_memory(kind: str, folder: Path) -> dict[str, float]:
    result = subprocess.run(
        [sys.executable, "-m", "bench.imaging", "--child", kind, str(folder)],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONPATH": os.getcwd()},
    )
    return dict(json.loads(result.stdout.strip().splitlines()[-1]))


def main() -> int:
    import SimpleITK as sitk

    from fixtures.series import write_fast_ct_series
    from node.imaging.volume import series_to_volume_input
    from node.inference.budgets import MAX_VOLUME_SLICES

    workdir = Path(tempfile.mkdtemp(prefix="mgn-bench-imaging-"))
    try:
        started = time.perf_counter()
        speed_paths = write_fast_ct_series(workdir / "speed", SPEED_SLICES)
        print(f"wrote {SPEED_SLICES} slices in {time.perf_counter() - started:.2f} s")
        files = [str(p) for p in speed_paths]

        ours: list[float] = []
        theirs: list[float] = []
        for _ in range(ROUNDS):
            t0 = time.perf_counter()
            volume = series_to_volume_input(speed_paths)
            ours.append(time.perf_counter() - t0)
            assert len(volume.images) == MAX_VOLUME_SLICES, len(volume.images)
            t0 = time.perf_counter()
            reader = sitk.ImageSeriesReader()
            reader.SetFileNames(files)
            image = reader.Execute()
            theirs.append(time.perf_counter() - t0)
            assert image.GetSize() == (512, 512, SPEED_SLICES)
            del image, reader, volume
        ratio = min(ours) / min(theirs)
        speed_pass = ratio <= SPEED_TARGET
        print(f"(a) {SPEED_SLICES} × 512² CT, best of {ROUNDS}")
        print(f"  medgemma-node files → 85 RGB slices  {min(ours):6.3f} s")
        print(f"  SimpleITK ImageSeriesReader (read)   {min(theirs):6.3f} s")
        print(f"  ratio {ratio:.2f} (target ≤ {SPEED_TARGET}): {'PASS' if speed_pass else 'FAIL'}")
        shutil.rmtree(workdir / "speed")

        started = time.perf_counter()
        write_fast_ct_series(workdir / "memory", MEMORY_SLICES)
        print(f"wrote {MEMORY_SLICES} slices in {time.perf_counter() - started:.2f} s")
        volume_mib = MEMORY_SLICES * 512 * 512 * 2 / MIB
        limit = MEMORY_FACTOR * volume_mib
        memory = _measure_memory("volume", workdir / "memory")
        sitk_memory = _measure_memory("sitk", workdir / "memory")
        memory_pass = memory["growth_mib"] <= limit
        print(f"(b) {MEMORY_SLICES} × 512² CT, peak RSS growth in a fresh process")
        print(
            f"  series_to_volume_input  {memory['growth_mib']:7.1f} MiB "
            f"({memory['seconds']:.2f} s); limit {limit:.0f} MiB "
            f"(2 × int16 volume): {'PASS' if memory_pass else 'FAIL'}"
        )
        print(
            f"  series_to_sitk (whole volume, for the record)  "
            f"{sitk_memory['growth_mib']:7.1f} MiB ({sitk_memory['seconds']:.2f} s)"
        )

        Path("bench/results").mkdir(parents=True, exist_ok=True)
        Path("bench/results/imaging.json").write_text(
            json.dumps(
                {
                    "machine": {
                        "cpus": os.cpu_count(),
                        "python": platform.python_version(),
                        "platform": platform.platform(),
                    },
                    "speed": {
                        "slices": SPEED_SLICES,
                        "rounds": ROUNDS,
                        "ours_seconds": ours,
                        "simpleitk_read_seconds": theirs,
                        "ratio_best": ratio,
                        "target": SPEED_TARGET,
                        "pass": speed_pass,
                    },
                    "memory": {
                        "slices": MEMORY_SLICES,
                        "int16_volume_mib": volume_mib,
                        "limit_mib": limit,
                        "series_to_volume_input": memory,
                        "series_to_sitk": sitk_memory,
                        "pass": memory_pass,
                    },
                },
                indent=2,
            )
            + "\n"
        )
        return 0 if speed_pass and memory_pass else 1
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--child":
        _child(sys.argv[2], sys.argv[3])
        sys.exit(0)
    sys.exit(main())
