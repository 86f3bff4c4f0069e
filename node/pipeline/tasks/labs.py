"""Lab reports: scanned or PDF pages read into values."""

from __future__ import annotations

from node.errors import reraised_as
from node.imaging.document import document_to_pages
from node.imaging.errors import ImagingError
from node.inference.answers import AnswerError, parse_lab_results
from node.inference.prompts import lab_report_prompt
from node.inference.request import Engine
from node.pipeline.record import LabRecord
from node.pipeline.tasks.common import ask, headers_named, measurement_report, readable_headers
from node.pipeline.tasks.job import InputError, TaskInput, TaskOutcome
from node.results.labs import lab_number


def run_lab_report(job: TaskInput, engine: Engine) -> TaskOutcome:
    with reraised_as(ImagingError, InputError):  # the study's failure, not the node's
        document = document_to_pages(job.paths)
    prompt = lab_report_prompt(document.pages, max_new_tokens=job.token_limit)
    answer = ask(
        job,
        engine,
        prompt,
        pages=len(document.pages),
        sop_instance_uids=document.sop_instance_uids,
        paddings=[padding.as_dict() for padding in document.paddings],
        notes=document.notes,
    )
    try:
        results = parse_lab_results(answer)
    except AnswerError as e:
        # A deterministic model gives the same answer again: fail with the reason.
        raise InputError(f"{engine.label} answered with no valid lab results: {e}") from e
    sources = headers_named(readable_headers(job.paths), document.sop_instance_uids)
    if not sources:
        raise InputError("the document's headers can't be read again")
    sr = measurement_report(
        job,
        engine,
        sources,
        [],
        narrative=f"{len(results)} lab test(s) extracted from {len(document.pages)} page(s).",
        lab_items=results,
    )
    uncoded = [r for r in results if lab_number(r) is None]
    record = LabRecord(
        pages=len(document.pages),
        lab_results=results,
        notes=document.notes
        + [
            f"lab test {r.name!r}: result {r.result!r} is not a number, kept as text only"
            for r in uncoded
        ],
    )
    return TaskOutcome(results=[sr], record=record)
