"""Helpers for checking DICOM objects with the reference tools on this machine."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from pydicom import Dataset

from node.results.files import write_dataset

__all__ = ["dciodvfy_errors", "dciodvfy_report", "write_tmp"]


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
