"""CT and MR volumes: up to 85 slices in one request, findings placed on slices."""

from __future__ import annotations

from typing import Literal

from node.config import Task
from node.imaging.context import clinical_context, context_record
from node.imaging.errors import ImagingError
from node.imaging.terms import NOT_GIVEN, volume_region
from node.imaging.volume import VolumeInput, series_to_volume_input
from node.inference.answers import strip_thinking, yes_no
from node.inference.prompts import VOLUME_DEFAULT_FINDING, volume_prompt
from node.inference.request import Engine
from node.pipeline.record import VolumeRecord
from node.pipeline.tasks.common import ask, measurement_report
from node.pipeline.tasks.job import InputError, TaskInput, TaskOutcome
from node.results.slices import volume_findings


def run_volume(job: TaskInput, engine: Engine) -> TaskOutcome:
    """The yes/no volume question on the study's main stack, as a TID 1500 report whose
    findings cite the slices the answer names."""
    # The series with the most instances is the study's main stack; others are noted.
    ranked = sorted(job.series.items(), key=lambda item: len(item[1]), reverse=True)
    errors: list[str] = []
    for series_uid, paths in ranked:
        try:
            volume = series_to_volume_input(
                paths,
                max_slices=job.imaging.max_slices,
                resample_axial=job.imaging.resample_axial,
            )
        except ImagingError as e:
            errors.append(str(e))
            continue
        # The sent slices' headers, as the stack read them: not read a second time.
        headers = volume.source_headers
        context = clinical_context(headers[0]) if headers else None
        region = volume_region(headers[0]) if headers else NOT_GIVEN
        modality: Literal["CT", "MR"] = "CT" if job.task is Task.CT_VOLUME else "MR"
        prompt = volume_prompt(
            volume.images,
            modality,
            context=context.text if context else None,
            region=region.text,
            max_new_tokens=job.token_limit,
        )
        # What was sent and how it was derived: in meta.json and the job record alike.
        sent: dict[str, object] = {
            "slice_indices": volume.slice_indices,
            "plane": volume.plane,
            "resampled": volume.resampled,
            "geometry": volume.geometry,
            "padding": volume.padding.as_dict(),
            "region": region.as_record(),
            **context_record(context),
        }
        answer = ask(
            job,
            engine,
            prompt,
            series_instance_uid=series_uid,
            z_positions=volume.z_positions,
            notes=volume.notes,
            **sent,
        )
        text = strip_thinking(answer) or answer
        verdict = yes_no(text)
        named = volume_findings(text, volume.slice_sources, verdict=verdict)
        sources = headers
        if not sources:
            raise InputError(
                f"series {series_uid}: no readable header names the instances the sent "
                "slices came from"
            )
        sr = measurement_report(
            job,
            engine,
            sources,
            named.findings,
            narrative=text,
            conclusion=_volume_conclusion(verdict, modality),
            context_used=context.text if context else None,
        )
        # ``sent`` is checked against the model's fields as the record is made.
        record = VolumeRecord.model_validate(
            {
                "series": series_uid,
                "slices_sent": len(volume.images),
                "verdict": verdict,
                "findings": [f.label for f in named.findings],
                "cited_slices": named.cited,
                "notes": list(volume.notes) + errors + named.notes + _resampled_note(volume),
                "other_series": [uid for uid, _ in ranked if uid != series_uid],
                **sent,
            }
        )
        return TaskOutcome(results=[sr], record=record)
    raise InputError("no series could be assembled into a volume: " + "; ".join(errors))


def _resampled_note(volume: VolumeInput) -> list[str]:
    if not volume.resampled:
        return []
    return [
        "resampled slices are each made from several stored images: the report cites no "
        "image per slice, and lists every instance of the stack as its source"
    ]


def _volume_conclusion(verdict: bool | None, modality: str) -> str:
    """The yes/no answer to the question the prompt asked (about VOLUME_DEFAULT_FINDING)."""
    asked = f"{VOLUME_DEFAULT_FINDING.capitalize()} in the {modality} volume"
    if verdict is None:
        return f"{asked}: the model gave no final yes/no answer"
    return f"{asked}: {'yes' if verdict else 'no'} (the model's final answer)"
