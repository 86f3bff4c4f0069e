"""Whole-slide images: tissue patches from one pyramid level in one request."""

from __future__ import annotations

from pydicom import Dataset
from pydicom.uid import VLWholeSlideMicroscopyImageStorage

from node.imaging.errors import ImagingError
from node.imaging.terms import NOT_GIVEN, slide_procedure, slide_tissue
from node.imaging.wsi import WsiInput, wsi_to_patches
from node.inference.answers import (
    AnswerError,
    parse_wsi_description,
)
from node.inference.prompts import (
    WSI_UNKNOWN,
    wsi_prompt,
)
from node.inference.request import Engine
from node.pipeline.record import WsiRecord
from node.pipeline.tasks.common import (
    InputError,
    TaskInput,
    TaskOutcome,
    generate,
    measurement_report,
    readable_headers,
)


def run_wsi(job: TaskInput, engine: Engine) -> TaskOutcome:
    paths = [path for files in job.series.values() for path in files]
    try:
        slide = wsi_to_patches(paths)
    except ImagingError as e:
        raise InputError(str(e)) from e
    headers = readable_headers(paths)
    tissue = slide_tissue(headers[0]) if headers else NOT_GIVEN
    procedure = slide_procedure(headers[0]) if headers else NOT_GIVEN
    prompt = wsi_prompt(
        slide.patches,
        tissue=tissue.text,
        procedure=procedure.text,
        max_new_tokens=job.token_limit,
    )
    answer = generate(
        engine,
        prompt,
        job.save_inputs,
        meta={
            "task": job.task.value,
            "series_instance_uid": slide.series_uid,
            "level_index": slide.level_index,
            "magnification": slide.magnification,
            "patch_positions": slide.positions,  # (row, column) at the level, in sent order
            "sample_seed": slide.seed,
            "tissue": tissue.as_record(),
            "procedure": procedure.as_record(),
            "notes": slide.notes,
        },
    )
    try:
        description = parse_wsi_description(answer)
    except AnswerError as e:
        raise InputError(f"{engine.label} gave no usable description: {e}") from e
    level = _level_headers(headers, slide)
    sr = measurement_report(job, engine, level, [], narrative=description)
    record = WsiRecord(
        series=slide.series_uid,
        patches_sent=len(slide.patches),
        level_index=slide.level_index,
        level_instances=[str(h.SOPInstanceUID) for h in level],
        magnification=slide.magnification,
        sample_seed=slide.seed,
        # What the prompt's "{tissue}, {procedure}:" line said, and where it came from.
        tissue=tissue.text or WSI_UNKNOWN,
        tissue_source=tissue.source,
        procedure=procedure.text or WSI_UNKNOWN,
        procedure_source=procedure.source,
        notes=slide.notes,
    )
    return TaskOutcome(results=[sr], record=record)


def _level_headers(headers: list[Dataset], slide: WsiInput) -> list[Dataset]:
    """The instances of the pyramid level the patches were cut from.

    Levels are numbered as :func:`node.imaging.wsi.wsi_to_patches` numbers them: the
    distinct total pixel matrices of the series' VL WSI images (labels and overviews
    aside), largest first; a concatenated level has several instances.
    """
    pyramid = [
        h
        for h in headers
        if h.get("SOPClassUID") == VLWholeSlideMicroscopyImageStorage
        and h.get("SeriesInstanceUID") == slide.series_uid
        and "TotalPixelMatrixRows" in h
        and "TotalPixelMatrixColumns" in h
        and _image_flavour(h) not in _FLAVOURS_OUTSIDE_PYRAMID
    ]
    sizes = sorted(
        {(int(h.TotalPixelMatrixRows), int(h.TotalPixelMatrixColumns)) for h in pyramid},
        key=lambda size: -size[0] * size[1],
    )
    if slide.level_index >= len(sizes):
        raise InputError(
            f"series {slide.series_uid}: level {slide.level_index} not among the "
            f"{len(sizes)} level(s) whose headers could be read again"
        )
    size = sizes[slide.level_index]
    return [
        h for h in pyramid if (int(h.TotalPixelMatrixRows), int(h.TotalPixelMatrixColumns)) == size
    ]


def _image_flavour(ds: Dataset) -> str:
    """Value 3 of Image Type (VOLUME, LABEL, OVERVIEW… for a WSI), upper case; "" if none."""
    value = ds.get("ImageType")
    values = [value] if isinstance(value, str) else list(value or [])
    return str(values[2]).upper() if len(values) > 2 else ""


_FLAVOURS_OUTSIDE_PYRAMID = frozenset({"LABEL", "OVERVIEW"})
