"""What the JSON routes answer, as pydantic models: the routes declare them as their
``response_model``, so ``/openapi.json`` documents the API and FastAPI checks each answer.

Field names and shapes are the API's (the worklist page and scripts read them); times are
ISO 8601 UTC strings with milliseconds and a ``Z``, as the node has always written them.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from node.config import Task
from node.results.boxes import SourceBox
from node.store.models import JobState, StudyState
from node.studies.pull import PullMethod

__all__ = [
    "Health",
    "JobImage",
    "JobItem",
    "JobTimings",
    "PullAccepted",
    "ReprocessAccepted",
    "ResultFile",
    "SeriesItem",
    "StudyItem",
    "UnreadableResult",
]


class Health(BaseModel):
    """``/healthz``: 200 with ``ok``, 503 with ``unavailable`` (no database or no worker)."""

    status: Literal["ok", "unavailable"]
    version: str
    database_reachable: bool
    workers_configured: int
    workers_alive: int  # processes running (loading the model or working)
    workers_ready: int  # of those, the ones whose model has loaded


class ResultFile(BaseModel):
    """A result object the job wrote, from its header."""

    sop_instance_uid: str
    sop_class_uid: str
    sop_class: str  # the SOP Class UID's name
    modality: str | None


class UnreadableResult(BaseModel):
    """A result file the node can no longer read."""

    sop_instance_uid: None = None
    error: str


class JobImage(BaseModel):
    """The radiograph a job's report was written on, and its picture for the page."""

    sop_instance_uid: str
    url: str


class JobTimings(BaseModel):
    received_first: str | None
    received_last: str | None
    created: str | None
    started: str | None
    finished: str | None
    seconds: float | None = Field(
        description="the last attempt's run time; still counting while the job runs"
    )


class JobItem(BaseModel):
    id: int
    task: Task
    rule: str
    state: JobState
    attempts: int
    error: str | None
    series: list[str]
    timings: JobTimings
    model: str | None
    test_model: bool
    findings: list[str]
    verdicts: list[str]
    volume_answer: bool | None = Field(
        description="CT/MR: the model's yes/no to 'any acute abnormality?'; null otherwise"
    )
    impression: str | None
    boxes: list[SourceBox]
    urgent: bool
    urgent_findings: list[str]
    image: JobImage | None
    delivered: bool
    delivered_to: list[str]
    results: list[ResultFile | UnreadableResult]


class SeriesItem(BaseModel):
    series_instance_uid: str
    modality: str | None
    body_part: str | None
    instances: int
    sender: str | None = Field(description="the calling AE title that sent it")


class StudyItem(BaseModel):
    """A study on the worklist. The ``patient_*`` fields are null and ``patient_hidden``
    true unless the node asks for a bearer token (and this request passed it)."""

    study_instance_uid: str
    accession_number: str | None
    patient_name: str | None
    patient_id: str | None
    patient_birth_date: str | None
    patient_sex: str | None
    patient_hidden: bool
    study_date: str | None
    study_time: str | None
    study_description: str | None
    modalities: list[str] = Field(description="each once, in the order the series arrived")
    viewer_url: str | None
    state: StudyState | JobState = Field(
        description="the study's state; a routed study shows the state of its current jobs"
    )
    note: str | None
    received_first: str | None
    received_last: str | None
    expected_instances: int | None
    instances: int
    series: list[SeriesItem]
    urgent: bool
    urgent_findings: list[str]
    findings: list[str]
    test_model: bool
    image_url: str | None
    jobs: list[JobItem]


class ReprocessAccepted(BaseModel):
    study_instance_uid: str
    jobs: list[int]


class PullAccepted(BaseModel):
    """What ``POST /api/studies/{uid}/process`` fetched and filed."""

    study_instance_uid: str
    jobs: list[int]
    instances: int
    new_instances: int
    refused_instances: int
    method: PullMethod
    state: StudyState
