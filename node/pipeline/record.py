"""The job record: what a task tells a reader about its run, one model per task.

A task returns its record (:class:`~node.pipeline.tasks.TaskOutcome`), the worker adds
the model that answered and stores it as JSON in ``jobs.record``
(``record.model_dump(mode="json")``), and the HTTP side reads it back into the same
model with :func:`read_record`. The keys are those earlier releases wrote, so their
records still read: a key they lack takes its default, a key this release doesn't know
is kept (``extra="allow"``) and written back unchanged.

    JobRecord                 notes, model, test_model: every task
    ├── FindingsRecord        findings, context, context_sources: tasks that name findings
    │   ├── CxrRecord         the radiograph, its prior, the comparison, boxes, impression
    │   └── VolumeRecord      the stack sent, the yes/no verdict, the slices cited
    ├── WsiRecord             the pyramid level and the patches sent
    └── LabRecord             the pages read and the lab results
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from pydantic import BaseModel, ConfigDict, ValidationError

from node.config import Task
from node.inference.answers import LabResult
from node.results.boxes import SourceBox

log = logging.getLogger(__name__)

__all__ = [
    "RECORD_TYPES",
    "CxrRecord",
    "FindingsRecord",
    "JobRecord",
    "LabRecord",
    "PriorFields",
    "VolumeRecord",
    "WsiRecord",
    "read_record",
]


class JobRecord(BaseModel):
    """What every task records. Every field has a default, so a record that lacks it reads."""

    # Keys of other releases are kept, not refused: the record is history, not input.
    model_config = ConfigDict(extra="allow")

    # What was dropped, guessed or irregular, and why (silent degradation is a defect).
    notes: list[str] = []
    model: str | None = None  # the engine's label; set by the worker, not the task
    test_model: bool = False

    def __getitem__(self, key: str) -> object:
        """A field by the key it is stored under, for callers that read the record as the
        mapping it is stored as (the task tests); KeyError for a key it doesn't hold."""
        if key in type(self).model_fields or key in (self.model_extra or {}):
            return getattr(self, key)
        raise KeyError(key)


class FindingsRecord(JobRecord):
    """Tasks that name findings in images given with the study's clinical context."""

    findings: list[str] = []  # labels, in the order the answer names them
    context: str | None = None  # the clinical context given to the model; None: none
    context_sources: list[str] = []  # the attributes it was read from


class PriorFields(BaseModel):
    """What the prior lookup recorded (:class:`node.priors.lookup.PriorResult`)."""

    prior_study: str | None = None  # None: no prior used (prior_note says why)
    prior_image: str | None = None
    prior_date: str | None = None
    prior_note: str | None = None
    prior_reasons: list[str] = []  # why each candidate study was taken or passed over


class CxrRecord(FindingsRecord, PriorFields):
    """A chest radiograph's report: the image sent, the comparison with a prior, boxes."""

    image: str | None = None  # SOP Instance UID of the radiograph sent
    view: str = ""  # its ViewPosition as written
    voi: str | None = None  # how its grey levels were made (see RadiographImage.voi)
    window: tuple[float, float] | None = None  # (center, width) applied, if a window was
    comparison: bool = False  # True: compared with the prior image
    verdicts: list[str] = []  # "finding: Verdict" lines of the comparison
    prior_report_used: bool = False  # this node's earlier report went into the comparison
    boxes: list[SourceBox] = []  # in source pixels; findings without a box have none
    impression: str | None = None  # the report's IMPRESSION section, when it has one
    report: str | None = None  # the whole report, or the comparison's summary


class VolumeRecord(FindingsRecord):
    """A CT or MR volume's yes/no answer, the stack sent and how it was derived."""

    series: str | None = None  # Series Instance UID of the stack sent
    slices_sent: int | None = None
    verdict: bool | None = None  # the model's yes/no; None: it gave no final answer
    cited_slices: list[int] = []  # slice numbers the answer cites
    other_series: list[str] = []  # the study's series not sent
    slice_indices: list[int] = []  # into the sorted (or resampled) stack, in sent order
    plane: str | None = None
    resampled: bool = False
    geometry: dict[str, object] = {}  # spacing, gaps, dropped counts (node.imaging.volume)
    padding: dict[str, int] = {}  # top, bottom, left, right of every slice
    region: dict[str, str | None] = {}  # the prompt's region phrase and its source


class WsiRecord(JobRecord):
    """A whole-slide image's description: the level and patches sent."""

    series: str | None = None
    patches_sent: int | None = None
    level_index: int | None = None  # 0: the finest level
    level_instances: list[str] = []  # SOP Instance UIDs of that level
    magnification: float | None = None
    sample_seed: int | None = None
    # What the prompt's "{tissue}, {procedure}:" line said, and where it came from.
    tissue: str | None = None
    tissue_source: str | None = None
    procedure: str | None = None
    procedure_source: str | None = None


class LabRecord(JobRecord):
    """A lab report's extracted values."""

    pages: int | None = None
    lab_results: list[LabResult] = []


RECORD_TYPES: dict[Task, type[JobRecord]] = {
    Task.CXR_REPORT: CxrRecord,
    Task.CXR_LONGITUDINAL: CxrRecord,
    Task.CT_VOLUME: VolumeRecord,
    Task.MR_VOLUME: VolumeRecord,
    Task.WSI: WsiRecord,
    Task.LAB_REPORT: LabRecord,
}


def read_record(task: Task, stored: Mapping[str, object] | None, *, job_id: int) -> JobRecord:
    """The stored record of job ``job_id`` as its task's model; an empty one if none is stored.

    A key whose value doesn't fit the model (written by hand, or by a release that wrote
    it differently) is left out with a warning naming the job and the key, so one odd
    value doesn't hide the rest; the stored record itself is not changed.
    """
    model = RECORD_TYPES[task]
    values = dict(stored or {})
    try:
        return model.model_validate(values)
    except ValidationError as e:
        # The messages, not the values: a report's text has no place in the log.
        errors = e.errors()
    unfit = {str(error["loc"][0]) for error in errors if error["loc"]}
    log.warning(
        "job %d: record key(s) %s not as a %s holds them, left out: %s",
        job_id,
        ", ".join(sorted(unfit)),
        model.__name__,
        "; ".join(f"{'.'.join(map(str, error['loc']))}: {error['msg']}" for error in errors),
    )
    return model.model_validate({key: value for key, value in values.items() if key not in unfit})
