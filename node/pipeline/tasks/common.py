"""What every task shares: its input and outcome, reading instances, asking the model."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pydicom import Dataset, dcmread
from pydicom.errors import InvalidDicomError

from node.config import ImagingSettings, LocalizationSettings, Output, Task
from node.imaging.context import ClinicalContext
from node.inference.answers import (
    LabResult,
)
from node.inference.prompts import (
    DEFAULT_MAX_NEW_TOKENS,
)
from node.inference.request import Engine, Prompt
from node.pipeline.record import JobRecord
from node.priors.lookup import PriorLookup
from node.results.tid1500 import LocalizedFinding, build_measurement_report

log = logging.getLogger(__name__)


class InputError(ValueError):
    """The study's data can never produce a result for this task; retrying won't help."""


@dataclass
class TaskOutcome:
    results: list[Dataset]
    record: JobRecord  # the task's own model (node.pipeline.record)


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


def read_instance(path: Path) -> Dataset:
    try:
        return dcmread(path)
    except (InvalidDicomError, OSError, ValueError) as e:
        raise InputError(f"{path} can't be read: {e}") from e


def readable_headers(paths: list[Path]) -> list[Dataset]:
    headers: list[Dataset] = []
    for path in paths:
        try:
            headers.append(dcmread(path, stop_before_pixels=True))
        except (InvalidDicomError, OSError, ValueError):
            continue  # the imaging step already noted it
    return headers


def context_record(context: ClinicalContext | None) -> dict[str, object]:
    """What the job record and meta.json say about the clinical context given to the model."""
    if context is None:
        return {"context": None}
    return {"context": context.text, "context_sources": list(context.sources)}


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
        image.save(out_dir / f"{number:03d}.png")
    (out_dir / "prompt.txt").write_text(prompt.text + "\n", encoding="utf-8")
    (out_dir / "meta.json").write_text(json.dumps(meta, indent=2, default=str) + "\n")


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
