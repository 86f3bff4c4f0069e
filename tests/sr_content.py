"""Reading the node's SR documents back in tests: content items, texts, evidence, library."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import highdicom as hd
import pydicom
from pydicom import Dataset
from pydicom.sr.codedict import codes

from tests.dicom_tools import dciodvfy_errors, pixelmed_sr_errors, write_tmp

__all__ = [
    "content_items",
    "evidence_uids",
    "headers",
    "library_uids",
    "texts",
    "validated_report",
]


def headers(paths: list[Path]) -> list[Dataset]:
    return [pydicom.dcmread(p, stop_before_pixels=True) for p in paths]


def content_items(ds: Dataset) -> Iterator[Dataset]:
    """Every content item of the tree, depth first."""
    for item in ds.get("ContentSequence", []):
        yield item
        yield from content_items(item)


def texts(ds: Dataset, meaning: str) -> list[str]:
    """The TEXT values whose concept name means ``meaning``, in tree order."""
    return [
        str(item.TextValue)
        for item in content_items(ds)
        if item.ValueType == "TEXT" and item.ConceptNameCodeSequence[0].CodeMeaning == meaning
    ]


def evidence_uids(ds: Dataset) -> list[str]:
    """SOP Instance UIDs of the Current Requested Procedure Evidence."""
    return [
        str(sop.ReferencedSOPInstanceUID)
        for study in ds.CurrentRequestedProcedureEvidenceSequence
        for series in study.ReferencedSeriesSequence
        for sop in series.ReferencedSOPSequence
    ]


def library_uids(ds: Dataset) -> list[str]:
    """SOP Instance UIDs of the TID 1600 image library's entries ([] without a library);
    a group's shared descriptors are not entries."""
    libraries = [
        item
        for item in ds.ContentSequence
        if item.ConceptNameCodeSequence[0].CodeValue == codes.DCM.ImageLibrary.value
    ]
    return [
        str(image.ReferencedSOPSequence[0].ReferencedSOPInstanceUID)
        for library in libraries
        for group in library.ContentSequence
        for image in group.ContentSequence
        if image.ValueType == "IMAGE"
    ]


def validated_report(sr: Dataset, tmp_path: Path) -> tuple[Path, hd.sr.MeasurementReport]:
    """Write ``sr``, check dciodvfy and PixelMed find no error, and read its TID 1500 back."""
    path = write_tmp(sr, tmp_path)
    assert dciodvfy_errors(path) == []
    assert pixelmed_sr_errors(path) == []
    content = hd.sr.srread(path).content
    assert isinstance(content, hd.sr.MeasurementReport)
    return path, content
