"""One function per task: DICOM files in, result data sets and a job record out.

No database and no network here, so ``medgemma-node run`` and the serving worker
share exactly the same path.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

from pydicom import Dataset, dcmread
from pydicom.errors import InvalidDicomError
from pydicom.uid import VLWholeSlideMicroscopyImageStorage

from node.config import ImagingSettings, LocalizationSettings, Output, Task
from node.imaging.context import ClinicalContext, clinical_context
from node.imaging.document import document_to_pages
from node.imaging.errors import ImagingError
from node.imaging.radiograph import RadiographImage, radiograph_to_image
from node.imaging.terms import NOT_GIVEN, slide_procedure, slide_tissue, volume_region
from node.imaging.volume import VolumeInput, series_to_volume_input
from node.imaging.wsi import WsiInput, wsi_to_patches
from node.inference.answers import (
    AnswerError,
    LabResult,
    parse_boxes,
    parse_lab_results,
    parse_longitudinal,
    parse_wsi_description,
    report_sections,
    strip_thinking,
    yes_no,
)
from node.inference.prompts import (
    DEFAULT_MAX_NEW_TOKENS,
    VOLUME_DEFAULT_FINDING,
    WSI_UNKNOWN,
    cxr_localize_prompt,
    cxr_longitudinal_prompt,
    cxr_report_prompt,
    lab_report_prompt,
    longitudinal_verdict_prompt,
    volume_prompt,
    wsi_prompt,
)
from node.inference.request import Engine, Prompt
from node.priors.lookup import PriorLookup
from node.results.boxes import map_boxes
from node.results.findings import named_findings
from node.results.gsps import build_gsps
from node.results.labs import lab_number
from node.results.sc import build_burned_in_sc
from node.results.slices import volume_findings
from node.results.tid1500 import LocalizedFinding, build_measurement_report

log = logging.getLogger(__name__)


class InputError(ValueError):
    """The study's data can never produce a result for this task; retrying won't help."""


@dataclass
class TaskOutcome:
    results: list[Dataset]
    record: dict[str, object] = field(default_factory=dict)


@dataclass(frozen=True)
class TaskInput:
    task: Task
    series: dict[str, list[Path]]  # SeriesInstanceUID -> instance files
    save_inputs: Path | None = None
    max_new_tokens: int | None = None  # None: the task's official default
    imaging: ImagingSettings = field(default_factory=ImagingSettings)
    priors: PriorLookup | None = None  # None: no prior is looked for
    localization: LocalizationSettings = field(default_factory=LocalizationSettings)
    outputs: frozenset[Output] = frozenset({Output.SR, Output.GSPS})  # what someone receives
    previous_results: tuple[Path, ...] = ()  # result files of the run this one supersedes

    @property
    def token_limit(self) -> int:
        return self.max_new_tokens or DEFAULT_MAX_NEW_TOKENS[self.task]


def _read(path: Path) -> Dataset:
    try:
        return dcmread(path)
    except (InvalidDicomError, OSError, ValueError) as e:
        raise InputError(f"{path} can't be read: {e}") from e


def _view_rank(ds: Dataset) -> int:
    # A report is written on the frontal view: PA before AP before anything else.
    order = {"PA": 0, "AP": 1}
    return order.get(str(ds.get("ViewPosition", "")).upper(), 2)


def _frontal_radiograph(job: TaskInput) -> tuple[Dataset, RadiographImage, list[str]]:
    """The image a report is written on: PA, then AP, then any that converts."""
    candidates: list[Dataset] = []
    notes: list[str] = []
    for series_uid, paths in job.series.items():
        for path in paths:
            try:
                candidates.append(_read(path))
            except InputError as e:
                notes.append(f"series {series_uid}: {e}")
    if not candidates:
        raise InputError("no readable radiograph in the routed series; " + "; ".join(notes))
    candidates.sort(key=_view_rank)
    for ds in candidates:
        try:
            return ds, radiograph_to_image(ds), notes
        except ImagingError as e:
            notes.append(str(e))
    raise InputError("no radiograph could be turned into a model input: " + "; ".join(notes))


def run_cxr_report(job: TaskInput, engine: Engine) -> TaskOutcome:
    """A report on the frontal image (a comparison when the patient's prior can be had),
    its findings localized, as a TID 1500 report with a GSPS and a burned-in capture."""
    ds, radiograph, notes = _frontal_radiograph(job)
    context = clinical_context(ds)
    context_text = context.text if context else None
    prior = job.priors.find(ds) if job.priors is not None else None
    prior_radiograph = None
    if prior is not None and prior.image is not None:
        try:
            prior_radiograph = radiograph_to_image(prior.image)
        except ImagingError as e:
            notes.append(f"prior image unusable, single-study report: {e}")
    meta: dict[str, object] = {
        "task": job.task.value,
        "sop_instance_uid": str(ds.SOPInstanceUID),
        "series_instance_uid": str(ds.SeriesInstanceUID),
        "voi": radiograph.voi,
        "window": radiograph.window,
        "padding": radiograph.padding.as_dict(),
        "source_size": [radiograph.source_rows, radiograph.source_columns],
        **_context_record(context),
    }
    record: dict[str, object] = {
        "image": str(ds.SOPInstanceUID),
        "view": str(ds.get("ViewPosition", "")),
        "voi": radiograph.voi,
        "window": radiograph.window,
        **_context_record(context),
        **(prior.record if prior is not None else {}),
    }
    verdicts: list[str] = []
    prior_sources: list[Dataset] = []
    task = job.task.value
    if prior is None or prior.image is None or prior_radiograph is None:
        prompt = cxr_report_prompt(
            radiograph.image, context=context_text, max_new_tokens=job.token_limit
        )
        report = _generate(engine, prompt, job.save_inputs, meta=meta)
        sections = report_sections(report)
        narrative = sections.get("FINDINGS") or report
        impression = sections.get("IMPRESSION")
        record["comparison"] = False
    else:
        prior_report = "\n".join(prior.reports) or None
        meta["prior_image"] = str(prior.image.SOPInstanceUID)
        meta["prior_padding"] = prior_radiograph.padding.as_dict()
        summary, verdicts, verdict_notes = _compare(
            job, engine, prior_radiograph, radiograph, prior_report, context_text, meta
        )
        notes += verdict_notes
        narrative, impression, report = summary, None, summary
        prior_sources = [prior.image]
        task = Task.CXR_LONGITUDINAL.value
        record.update(
            comparison=True, verdicts=verdicts, prior_report_used=prior_report is not None
        )
    findings, localization_notes = _localize(job, engine, radiograph, report)
    boxes = [f.box for f in findings if f.box is not None]
    record.update(
        notes=notes + list(radiograph.notes) + localization_notes,
        findings=[f.label for f in findings],
        boxes=[asdict(box) for box in boxes],
        # For the worklist: what a reader scans first.
        impression=impression,
        report=report,
    )
    results = [
        _report(
            job,
            engine,
            [ds],
            findings,
            narrative=narrative,
            impression=impression,
            task=task,
            verdicts=[f"Compared with the prior study: {v}" for v in verdicts],
            prior_sources=prior_sources,
            context_used=context_text,
        )
    ]
    if Output.GSPS in job.outputs and boxes:
        results.append(
            build_gsps(ds, boxes, model_label=engine.label, is_test_model=engine.is_test_model)
        )
    if Output.SC in job.outputs:
        results.append(
            build_burned_in_sc(
                ds,
                radiograph,
                boxes,
                impression=impression or narrative,
                model_label=engine.label,
                is_test_model=engine.is_test_model,
            )
        )
    return TaskOutcome(results=results, record=record)


def _compare(
    job: TaskInput,
    engine: Engine,
    prior: RadiographImage,
    current: RadiographImage,
    prior_report: str | None,
    context: str | None,
    meta: dict[str, object],
) -> tuple[str, list[str], list[str]]:
    """(comparison, "finding: Verdict" lines, notes): the notebook's turn exactly, then the
    node's verdict question as a second turn of the same conversation."""
    prompt = cxr_longitudinal_prompt(prior.image, current.image, max_new_tokens=job.token_limit)
    answer = _generate(engine, prompt, job.save_inputs, meta=meta)
    try:
        comparison = parse_longitudinal(answer)
    except AnswerError as e:
        raise InputError(f"{engine.label} gave no usable comparison: {e}") from e
    follow_up = longitudinal_verdict_prompt(
        prompt, answer, prior_report=prior_report, context=context
    )
    save = job.save_inputs / "verdicts" if job.save_inputs is not None else None
    second = _generate(engine, follow_up, save, meta={**meta, "turn": "verdicts"})
    found = comparison.verdicts + parse_longitudinal(second).verdicts
    notes = [] if found else ["the verdict turn gave no FINDING lines: no coded change"]
    verdicts = [f"{v.finding}: {v.verdict.capitalize()}" for v in found]
    return comparison.summary, list(dict.fromkeys(verdicts)), notes


def _localize(
    job: TaskInput, engine: Engine, radiograph: RadiographImage, report: str
) -> tuple[list[LocalizedFinding], list[str]]:
    """Ask for boxes of each finding; a finding without a usable box is kept unboxed."""
    settings = job.localization
    if settings.findings:
        labels = list(dict.fromkeys(settings.findings))[: settings.max_findings]
    else:
        labels = named_findings(report, limit=settings.max_findings)
    if not settings.enabled:
        return [LocalizedFinding(label) for label in labels], []
    findings: list[LocalizedFinding] = []
    notes: list[str] = []
    for number, label in enumerate(labels, start=1):
        save = job.save_inputs / f"localize-{number}" if job.save_inputs is not None else None
        prompt = cxr_localize_prompt(radiograph.image, label)
        answer = _generate(engine, prompt, save, meta={"task": "localize", "finding": label})
        try:
            boxes = parse_boxes(strip_thinking(answer))
        except AnswerError as e:
            notes.append(f"localization of {label!r}: no usable boxes: {e}")
            findings.append(LocalizedFinding(label))
            continue
        kept, dropped = map_boxes(boxes, radiograph)
        notes += dropped
        findings += [LocalizedFinding(label, box) for box in kept] or [LocalizedFinding(label)]
    return findings, notes


def _report(
    job: TaskInput,
    engine: Engine,
    sources: Sequence[Dataset],
    findings: Sequence[LocalizedFinding],
    *,
    narrative: str,
    impression: str | None = None,
    conclusion: str | None = None,
    task: str | None = None,
    verdicts: Sequence[str] = (),
    prior_sources: Sequence[Dataset] = (),
    lab_items: Sequence[LabResult] = (),
    context_used: str | None = None,
) -> Dataset:
    """The job's TID 1500 report: the model named, the run it replaces cited."""
    return build_measurement_report(
        sources,
        findings,
        narrative=narrative,
        impression=impression,
        conclusion=conclusion,
        model_label=engine.label,
        is_test_model=engine.is_test_model,
        task=task or job.task.value,
        verdicts=verdicts,
        prior_sources=prior_sources,
        lab_items=lab_items,
        context_used=context_used,
        previous_versions=_previous_reports(job),
    )


def _previous_reports(job: TaskInput) -> list[Dataset]:
    """The SR documents of the study's earlier run of this task, which this run replaces."""
    reports: list[Dataset] = []
    for path in job.previous_results:
        try:
            ds = dcmread(path, stop_before_pixels=True)
        except (InvalidDicomError, OSError, ValueError) as e:
            log.warning("earlier result %s unreadable, not cited as predecessor: %s", path, e)
            continue
        if ds.get("Modality") == "SR":
            reports.append(ds)
    return reports


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
        headers = _readable_headers(paths)
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
            **_context_record(context),
        }
        answer = _generate(
            engine,
            prompt,
            job.save_inputs,
            meta={
                "task": job.task.value,
                "series_instance_uid": series_uid,
                "z_positions": volume.z_positions,
                "notes": volume.notes,
                **sent,
            },
        )
        text = strip_thinking(answer) or answer
        verdict = yes_no(text)
        named = volume_findings(text, volume.slice_sources, verdict=verdict)
        by_uid = {str(h.SOPInstanceUID): h for h in headers if "SOPInstanceUID" in h}
        sources = [by_uid[uid] for uid in volume.source_instance_uids if uid in by_uid]
        if not sources:
            raise InputError(
                f"series {series_uid}: no readable header names the instances the sent "
                "slices came from"
            )
        sr = _report(
            job,
            engine,
            sources,
            named.findings,
            narrative=text,
            conclusion=_volume_conclusion(verdict, modality),
            context_used=context.text if context else None,
        )
        record: dict[str, object] = {
            "series": series_uid,
            "slices_sent": len(volume.images),
            "verdict": verdict,
            "findings": [f.label for f in named.findings],
            "cited_slices": named.cited,
            "notes": list(volume.notes) + errors + named.notes + _resampled_note(volume),
            "other_series": [uid for uid, _ in ranked if uid != series_uid],
            **sent,
        }
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


def run_wsi(job: TaskInput, engine: Engine) -> TaskOutcome:
    paths = [path for files in job.series.values() for path in files]
    try:
        slide = wsi_to_patches(paths)
    except ImagingError as e:
        raise InputError(str(e)) from e
    headers = _readable_headers(paths)
    tissue = slide_tissue(headers[0]) if headers else NOT_GIVEN
    procedure = slide_procedure(headers[0]) if headers else NOT_GIVEN
    prompt = wsi_prompt(
        slide.patches,
        tissue=tissue.text,
        procedure=procedure.text,
        max_new_tokens=job.token_limit,
    )
    answer = _generate(
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
    sr = _report(job, engine, level, [], narrative=description)
    record: dict[str, object] = {
        "series": slide.series_uid,
        "patches_sent": len(slide.patches),
        "level_index": slide.level_index,
        "level_instances": [str(h.SOPInstanceUID) for h in level],
        "magnification": slide.magnification,
        "sample_seed": slide.seed,
        # What the prompt's "{tissue}, {procedure}:" line said, and where it came from.
        "tissue": tissue.text or WSI_UNKNOWN,
        "tissue_source": tissue.source,
        "procedure": procedure.text or WSI_UNKNOWN,
        "procedure_source": procedure.source,
        "notes": slide.notes,
    }
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


def run_lab_report(job: TaskInput, engine: Engine) -> TaskOutcome:
    paths = [path for files in job.series.values() for path in files]
    try:
        document = document_to_pages(paths)
    except ImagingError as e:
        raise InputError(str(e)) from e
    prompt = lab_report_prompt(document.pages, max_new_tokens=job.token_limit)
    answer = _generate(
        engine,
        prompt,
        job.save_inputs,
        meta={
            "task": job.task.value,
            "pages": len(document.pages),
            "sop_instance_uids": document.sop_instance_uids,
            "paddings": [padding.as_dict() for padding in document.paddings],
            "notes": document.notes,
        },
    )
    try:
        results = parse_lab_results(answer)
    except AnswerError as e:
        # A deterministic model gives the same answer again: fail with the reason.
        raise InputError(f"{engine.label} answered with no valid lab results: {e}") from e
    by_uid = {str(h.SOPInstanceUID): h for h in _readable_headers(paths) if "SOPInstanceUID" in h}
    sources = [by_uid[uid] for uid in dict.fromkeys(document.sop_instance_uids) if uid in by_uid]
    if not sources:
        raise InputError("the document's headers can't be read again")
    sr = _report(
        job,
        engine,
        sources,
        [],
        narrative=f"{len(results)} lab test(s) extracted from {len(document.pages)} page(s).",
        lab_items=results,
    )
    uncoded = [r for r in results if lab_number(r) is None]
    record: dict[str, object] = {
        "pages": len(document.pages),
        "lab_results": [asdict(result) for result in results],
        "notes": document.notes
        + [
            f"lab test {r.name!r}: result {r.result!r} is not a number, kept as text only"
            for r in uncoded
        ],
    }
    return TaskOutcome(results=[sr], record=record)


def _readable_headers(paths: list[Path]) -> list[Dataset]:
    headers: list[Dataset] = []
    for path in paths:
        try:
            headers.append(dcmread(path, stop_before_pixels=True))
        except (InvalidDicomError, OSError, ValueError):
            continue  # the imaging step already noted it
    return headers


def _context_record(context: ClinicalContext | None) -> dict[str, object]:
    """What the job record and meta.json say about the clinical context given to the model."""
    if context is None:
        return {"context": None}
    return {"context": context.text, "context_sources": list(context.sources)}


def _generate(
    engine: Engine, prompt: Prompt, save_inputs: Path | None, meta: dict[str, object]
) -> str:
    if save_inputs is not None:
        save_model_inputs(prompt, save_inputs, meta)
    started = time.perf_counter()
    text = engine.generate(prompt).strip()
    log.info(
        "%s answered in %.1f s (%d characters)",
        engine.label,
        time.perf_counter() - started,
        len(text),
    )
    if not text:
        raise InputError(f"{engine.label} returned an empty answer")
    return text


def save_model_inputs(prompt: Prompt, out_dir: Path, meta: dict[str, object]) -> None:
    """Write exactly what the model receives: images in prompt order, the prompt, metadata."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for number, image in enumerate(prompt.images):
        image.save(out_dir / f"{number:03d}.png")
    (out_dir / "prompt.txt").write_text(prompt.text + "\n", encoding="utf-8")
    (out_dir / "meta.json").write_text(json.dumps(meta, indent=2, default=str) + "\n")


RUNNERS: dict[Task, Callable[[TaskInput, Engine], TaskOutcome]] = {
    Task.CXR_REPORT: run_cxr_report,
    Task.CXR_LONGITUDINAL: run_cxr_report,
    Task.CT_VOLUME: run_volume,
    Task.MR_VOLUME: run_volume,
    Task.WSI: run_wsi,
    Task.LAB_REPORT: run_lab_report,
}


def run_task(job: TaskInput, engine: Engine) -> TaskOutcome:
    return RUNNERS[job.task](job, engine)
