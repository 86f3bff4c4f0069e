"""What a report is written on: the findings the model named, and the checks its sources
must pass (one study, every box inside its image, every reference to a frame that exists)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from pydicom import Dataset

from node.results.boxes import SourceBox
from node.results.image_library import is_image

__all__ = ["ImageReference", "LocalizedFinding", "check_sources", "distinct"]


@dataclass(frozen=True)
class ImageReference:
    """One of the report's source images, or one frame of a multi-frame source."""

    sop_instance_uid: str
    frame_number: int | None = None  # 1-based


@dataclass(frozen=True)
class LocalizedFinding:
    """A finding the model named: its box in pixels of the first source when it gave one,
    else the source images it refers to (a volume's slices), if any."""

    label: str
    box: SourceBox | None = None
    images: tuple[ImageReference, ...] = ()


def distinct(datasets: Sequence[Dataset]) -> list[Dataset]:
    """Each instance once (several frames of one object, a page twice), in the order given."""
    by_uid: dict[str, Dataset] = {}
    for ds in datasets:
        by_uid.setdefault(str(ds.get("SOPInstanceUID", "")), ds)
    return list(by_uid.values())


def check_sources(sources: Sequence[Dataset], findings: Sequence[LocalizedFinding]) -> None:
    """One study, every reference resolvable, every box inside the first source."""
    if not sources:
        raise ValueError("sources must hold at least one instance")
    for position, ds in enumerate(sources):
        missing = [
            keyword
            for keyword in ("SOPInstanceUID", "SOPClassUID", "StudyInstanceUID")
            if not ds.get(keyword)
        ]
        if missing:
            raise ValueError(f"source at position {position} has no {', '.join(missing)}")
    studies = sorted({str(ds.StudyInstanceUID) for ds in sources})
    if len(studies) > 1:
        raise ValueError(
            "sources must belong to one study, got StudyInstanceUIDs: " + ", ".join(studies)
        )
    by_uid = {str(ds.SOPInstanceUID): ds for ds in sources}
    for finding in findings:
        if finding.box is not None:
            if finding.images:
                raise ValueError(
                    f"finding {finding.label!r}: a box lies on the first source; "
                    "give it no image references"
                )
            _check_box(sources[0], finding.label, finding.box)
        for reference in finding.images:
            _check_reference(by_uid, finding.label, reference)


def _check_box(source: Dataset, label: str, box: SourceBox) -> None:
    uid = source.SOPInstanceUID
    if not is_image(source):
        raise ValueError(f"source {uid} has no Rows/Columns: boxes need an image")
    rows, columns = int(source.Rows), int(source.Columns)
    if not (0 <= box.top < box.bottom <= rows and 0 <= box.left < box.right <= columns):
        raise ValueError(
            f"finding {label!r}: box {box} is not inside source {uid} "
            f"({columns} columns × {rows} rows); map it with node.results.boxes"
        )


def _check_reference(by_uid: dict[str, Dataset], label: str, reference: ImageReference) -> None:
    source = by_uid.get(reference.sop_instance_uid)
    if source is None or not is_image(source):
        raise ValueError(
            f"finding {label!r}: image {reference.sop_instance_uid} is not among the "
            "report's image sources"
        )
    frame = reference.frame_number
    frames = int(source.get("NumberOfFrames", 1) or 1)
    if frame is not None and not 1 <= frame <= frames:
        raise ValueError(
            f"finding {label!r}: image {reference.sop_instance_uid} has {frames} frame(s), "
            f"frame {frame} referenced"
        )
