"""Chest radiographs: a report (compared with the prior when there is one), findings localized."""

from __future__ import annotations

from pydicom import Dataset

from node.config import Output, Task
from node.imaging.context import ClinicalContext, clinical_context, context_record
from node.imaging.errors import ImagingError
from node.imaging.radiograph import RadiographImage, radiograph_to_image
from node.inference.answers import (
    AnswerError,
    parse_boxes,
    parse_longitudinal,
    report_sections,
    strip_thinking,
)
from node.inference.prompts import (
    cxr_localize_prompt,
    cxr_longitudinal_prompt,
    cxr_report_prompt,
    longitudinal_verdict_prompt,
)
from node.inference.request import Engine
from node.pipeline.record import CxrRecord, PriorFields
from node.pipeline.tasks.common import generate, measurement_report, read_instance, result_author
from node.pipeline.tasks.job import InputError, TaskInput, TaskOutcome
from node.results.boxes import map_boxes
from node.results.findings import named_findings
from node.results.gsps import build_gsps
from node.results.report_input import LocalizedFinding
from node.results.sc import build_burned_in_sc


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
                candidates.append(read_instance(path))
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
    prior = job.priors.find(ds) if job.priors is not None else None
    prior_radiograph = None
    if prior is not None and prior.image is not None:
        try:
            prior_radiograph = radiograph_to_image(prior.image)
        except ImagingError as e:
            notes.append(f"prior image unusable, single-study report: {e}")
    # The quick-start report prompt carries no clinical context; only the node's own
    # verdict turn of a comparison asks with it.
    context = clinical_context(ds) if prior_radiograph is not None else None
    context_text = context.text if context else None
    meta: dict[str, object] = {
        "task": job.task.value,
        "sop_instance_uid": str(ds.SOPInstanceUID),
        "series_instance_uid": str(ds.SeriesInstanceUID),
        "voi": radiograph.voi,
        "window": radiograph.window,
        "padding": radiograph.padding.as_dict(),
        "source_size": [radiograph.source_rows, radiograph.source_columns],
        **context_record(None),  # the report and the comparison's first turn: none given
    }
    verdicts: list[str] = []
    prior_report: str | None = None
    prior_sources: list[Dataset] = []
    task = job.task.value
    if prior is None or prior.image is None or prior_radiograph is None:
        prompt = cxr_report_prompt(radiograph.image, max_new_tokens=job.token_limit)
        report = generate(engine, prompt, job.save_inputs, meta=meta)
        sections = report_sections(report)
        narrative = sections.get("FINDINGS") or report
        impression = sections.get("IMPRESSION")
    else:
        prior_report = "\n".join(prior.reports) or None
        meta["prior_image"] = str(prior.image.SOPInstanceUID)
        meta["prior_padding"] = prior_radiograph.padding.as_dict()
        summary, verdicts, verdict_notes = _compare(
            job, engine, prior_radiograph, radiograph, prior_report, context, meta
        )
        notes += verdict_notes
        narrative, impression, report = summary, None, summary
        prior_sources = [prior.image]
        task = Task.CXR_LONGITUDINAL.value
    findings, localization_notes = _localize(job, engine, radiograph, report)
    boxes = [f.box for f in findings if f.box is not None]
    record = CxrRecord(
        image=str(ds.SOPInstanceUID),
        view=str(ds.get("ViewPosition", "")),
        voi=radiograph.voi,
        window=radiograph.window,
        context=context_text,
        context_sources=list(context.sources) if context else [],
        **(PriorFields.model_validate(prior.record).model_dump() if prior is not None else {}),
        comparison=bool(prior_sources),
        verdicts=verdicts,
        prior_report_used=prior_report is not None,
        notes=notes + list(radiograph.notes) + localization_notes,
        findings=[f.label for f in findings],
        boxes=boxes,
        # For the worklist: what a reader scans first.
        impression=impression,
        report=report,
    )
    results = [
        measurement_report(
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
        results.append(build_gsps(ds, boxes, author=result_author(engine)))
    if Output.SC in job.outputs:
        results.append(
            build_burned_in_sc(
                ds,
                radiograph,
                boxes,
                impression=impression or narrative,
                author=result_author(engine),
            )
        )
    return TaskOutcome(results=results, record=record)


def _compare(
    job: TaskInput,
    engine: Engine,
    prior: RadiographImage,
    current: RadiographImage,
    prior_report: str | None,
    context: ClinicalContext | None,
    meta: dict[str, object],
) -> tuple[str, list[str], list[str]]:
    """(comparison, "finding: Verdict" lines, notes): the notebook's turn exactly, then the
    node's verdict question as a second turn of the same conversation."""
    prompt = cxr_longitudinal_prompt(prior.image, current.image, max_new_tokens=job.token_limit)
    answer = generate(engine, prompt, job.save_inputs, meta=meta)
    try:
        comparison = parse_longitudinal(answer)
    except AnswerError as e:
        raise InputError(f"{engine.label} gave no usable comparison: {e}") from e
    follow_up = longitudinal_verdict_prompt(
        prompt, answer, prior_report=prior_report, context=context.text if context else None
    )
    save = job.save_inputs / "verdicts" if job.save_inputs is not None else None
    verdict_meta = {**meta, "turn": "verdicts", **context_record(context)}
    second = generate(engine, follow_up, save, meta=verdict_meta)
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
        answer = generate(engine, prompt, save, meta={"task": "localize", "finding": label})
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
