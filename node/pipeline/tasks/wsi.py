"""Whole-slide images: tissue patches from one pyramid level in one request."""

from __future__ import annotations

from node.errors import reraised_as
from node.imaging.errors import ImagingError
from node.imaging.terms import NOT_GIVEN, slide_procedure, slide_tissue
from node.imaging.wsi import wsi_to_patches
from node.inference.answers import AnswerError, parse_wsi_description
from node.inference.prompts import WSI_UNKNOWN, wsi_prompt
from node.inference.request import Engine
from node.pipeline.record import WsiRecord
from node.pipeline.tasks.common import ask, measurement_report, readable_headers
from node.pipeline.tasks.job import InputError, TaskInput, TaskOutcome


def run_wsi(job: TaskInput, engine: Engine) -> TaskOutcome:
    with reraised_as(ImagingError, InputError):  # the study's failure, not the node's
        slide = wsi_to_patches(job.paths)
    # The prompt's tissue and procedure come from the series' first instance.
    headers = readable_headers(job.paths[:1])
    tissue = slide_tissue(headers[0]) if headers else NOT_GIVEN
    procedure = slide_procedure(headers[0]) if headers else NOT_GIVEN
    prompt = wsi_prompt(
        slide.patches,
        tissue=tissue.text,
        procedure=procedure.text,
        max_new_tokens=job.token_limit,
    )
    answer = ask(
        job,
        engine,
        prompt,
        series_instance_uid=slide.series_uid,
        level_index=slide.level_index,
        magnification=slide.magnification,
        patch_positions=slide.positions,  # (row, column) at the level, in sent order
        sample_seed=slide.seed,
        tissue=tissue.as_record(),
        procedure=procedure.as_record(),
        notes=slide.notes,
    )
    try:
        description = parse_wsi_description(answer)
    except AnswerError as e:
        raise InputError(f"{engine.label} gave no usable description: {e}") from e
    level = slide.level_instances
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
