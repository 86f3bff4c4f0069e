"""A task's job: what it is given, what it gives back, and the one failure a study causes."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from pydicom import Dataset

from node.config import ImagingSettings, LocalizationSettings, Output, Task
from node.inference.prompts import DEFAULT_MAX_NEW_TOKENS
from node.pipeline.record import JobRecord
from node.priors.lookup import PriorLookup


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

    @property
    def paths(self) -> list[Path]:
        """Every instance file of every routed series, series by series."""
        return [path for files in self.series.values() for path in files]
