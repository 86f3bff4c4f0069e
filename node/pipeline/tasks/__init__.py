"""One module per task: DICOM files in, result data sets and a job record out.

No database and no network here, so ``medgemma-node run`` and the serving worker
share exactly the same path. :mod:`.job` is a task's input and outcome, :mod:`.common`
what every task does alike.
"""

from __future__ import annotations

from collections.abc import Callable

from node.config import Task
from node.inference.request import Engine
from node.pipeline.tasks.cxr import run_cxr_report
from node.pipeline.tasks.job import InputError, TaskInput, TaskOutcome
from node.pipeline.tasks.labs import run_lab_report
from node.pipeline.tasks.volume import run_volume
from node.pipeline.tasks.wsi import run_wsi

__all__ = ["InputError", "TaskInput", "TaskOutcome", "run_task"]

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
