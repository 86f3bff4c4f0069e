"""What every task does alike: reading instances, asking the model, the TID 1500 report.

The job itself (input, outcome, the one failure a study causes) is :mod:`.job`.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

from pydicom import Dataset

from node.errors import reraised_as
from node.files import atomic_file, write_atomically
from node.imaging.dicom_io import read_dataset
from node.imaging.errors import ImagingError
from node.inference.answers import LabResult
from node.inference.request import Engine, Prompt
from node.pipeline.tasks.job import InputError, TaskInput
from node.results.author import ResultAuthor
from node.results.report_input import LocalizedFinding
from node.results.tid1500 import build_measurement_report

log = logging.getLogger(__name__)


def read_instance(path: Path) -> Dataset:
    with reraised_as(ImagingError, InputError):
        return read_dataset(path)


def readable_headers(paths: list[Path]) -> list[Dataset]:
    headers: list[Dataset] = []
    for path in paths:
        try:
            headers.append(read_dataset(path, header_only=True))
        except ImagingError:
            continue  # the imaging step already noted it
    return headers


def headers_named(headers: Iterable[Dataset], uids: Iterable[str]) -> list[Dataset]:
    """The headers of ``uids`` (SOP Instance UIDs), in that order, each once; a UID
    without a header is left out."""
    by_uid = {str(h.SOPInstanceUID): h for h in headers if "SOPInstanceUID" in h}
    return [by_uid[uid] for uid in dict.fromkeys(uids) if uid in by_uid]


def ask(job: TaskInput, engine: Engine, prompt: Prompt, **meta: object) -> str:
    """The answer to the job's main prompt; ``meta`` goes to meta.json after the task's name."""
    return generate(engine, prompt, job.save_inputs, meta={"task": job.task.value, **meta})


def generate(
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
        with atomic_file(out_dir / f"{number:03d}.png") as handle:
            image.save(handle, format="PNG")
    write_atomically(out_dir / "prompt.txt", prompt.text + "\n")
    write_atomically(out_dir / "meta.json", json.dumps(meta, indent=2, default=str) + "\n")


def result_author(engine: Engine) -> ResultAuthor:
    """What every result object says of the model that answered."""
    return ResultAuthor(engine.label, engine.is_test_model)


def measurement_report(
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
        author=result_author(engine),
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
            ds = read_dataset(path, header_only=True)
        except ImagingError as e:
            log.warning("earlier result %s unreadable, not cited as predecessor: %s", path, e)
            continue
        if ds.get("Modality") == "SR":
            reports.append(ds)
    return reports
