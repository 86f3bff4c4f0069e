"""Lab reports: scanned or PDF pages read into values."""

from __future__ import annotations

from node.imaging.document import document_to_pages
from node.imaging.errors import ImagingError
from node.inference.answers import (
    AnswerError,
    parse_lab_results,
)
from node.inference.prompts import (
    lab_report_prompt,
)
from node.inference.request import Engine
from node.pipeline.record import LabRecord
from node.pipeline.tasks.common import (
    InputError,
    TaskInput,
    TaskOutcome,
    generate,
    measurement_report,
    readable_headers,
)
from node.results.labs import lab_number


def run_lab_report(job: TaskInput, engine: Engine) -> TaskOutcome:
    paths = [path for files in job.series.values() for path in files]
    try:
        document = document_to_pages(paths)
    except ImagingError as e:
        raise InputError(str(e)) from e
    prompt = lab_report_prompt(document.pages, max_new_tokens=job.token_limit)
    answer = generate(
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
    by_uid = {str(h.SOPInstanceUID): h for h in readable_headers(paths) if "SOPInstanceUID" in h}
    sources = [by_uid[uid] for uid in dict.fromkeys(document.sop_instance_uids) if uid in by_uid]
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
