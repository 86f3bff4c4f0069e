"""Helpers for checking DICOM objects with the reference tools on this machine."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from pydicom import Dataset

from node.results.files import write_dataset

__all__ = [
    "dciodvfy_errors",
    "dciodvfy_report",
    "pixelmed_sr_errors",
    "pixelmed_sr_report",
    "write_tmp",
]


def dciodvfy_report(path: Path) -> list[str]:
    """Run dicom3tools' ``dciodvfy`` on ``path``; return its Error and Warning lines.

    dciodvfy exits 1 on any error, so the exit code is not checked: the lines
    say what failed, which is what a test should print.
    """
    executable = shutil.which("dciodvfy")
    if executable is None:
        raise RuntimeError("dciodvfy not found on PATH (Debian package dicom3tools)")
    result = subprocess.run(
        [executable, str(path)], capture_output=True, text=True, check=False, timeout=120
    )
    lines = (result.stdout + result.stderr).splitlines()
    return [line for line in lines if line.startswith(("Error", "Warning"))]


def dciodvfy_errors(path: Path) -> list[str]:
    """Lines of ``dciodvfy`` output that report an error in ``path``."""
    return [line for line in dciodvfy_report(path) if line.startswith("Error")]


def write_tmp(ds: Dataset, tmp_path: Path, name: str | None = None) -> Path:
    """Write ``ds`` under ``tmp_path`` (named after its SOP Instance UID by default)."""
    filename = name if name is not None else f"{ds.SOPInstanceUID}.dcm"
    return write_dataset(ds, tmp_path / filename)


def pixelmed_sr_report(path: Path) -> list[str]:
    """Run PixelMed's ``DicomSRValidator`` (template ids and item order checked) on ``path``.

    Returns every output line; PixelMed prints ``Error:`` / ``Warning:`` lines
    among others, and its exit code does not reflect template errors.
    """
    java = shutil.which("java")
    if java is None:
        raise RuntimeError("java not found on PATH (Debian package pixelmed-apps)")
    result = subprocess.run(
        [
            java,
            # PixelMed's template XPath expressions exceed the JDK's default limits.
            "-Djdk.xml.xpathExprOpLimit=0",
            "-Djdk.xml.xpathExprGrpLimit=0",
            "-Djdk.xml.xpathTotalOpLimit=0",
            "-cp",
            "/usr/share/java/pixelmed.jar",
            "com.pixelmed.validate.DicomSRValidator",
            "-checkcontentitemorder",
            "-checktemplateid",
            str(path),
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    return (result.stdout + result.stderr).splitlines()


# PixelMed's progress lines; everything else it prints is a finding. IOD-level
# faults (an illegal relationship, say) come without an "Error" prefix.
_PIXELMED_PROGRESS = ("Found ", "Root Template Validation Complete", "IOD validation complete")


def pixelmed_sr_errors(path: Path) -> list[str]:
    """Lines of PixelMed's SR validation of ``path`` that are neither progress nor warnings."""
    return [
        line
        for line in pixelmed_sr_report(path)
        if line.strip() and not line.startswith(_PIXELMED_PROGRESS + ("Warning",))
    ]
