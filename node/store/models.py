"""The index: studies, series, instances and jobs (SQLAlchemy; SQLite or PostgreSQL)."""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum

from sqlalchemy import JSON, DateTime, Enum, ForeignKey, Integer, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from node.config import Task


def utcnow() -> datetime:
    return datetime.now(UTC)


def aware(value: datetime) -> datetime:
    """A time read from the index, in UTC: SQLite hands back naive datetimes even for
    timezone-aware columns, and the index only ever writes UTC."""
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


class StudyState(StrEnum):
    RECEIVING = "receiving"  # instances arriving; not yet stable
    ROUTED = "routed"  # jobs created for the study as it stands
    SKIPPED = "skipped"  # no routing rule matched


class JobState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"  # gave up after max_attempts, or input that can never work
    # Dead letter: results saved, but a destination refused them delivery.max_attempts times.
    UNDELIVERED = "undelivered"
    SUPERSEDED = "superseded"  # late instances re-opened the study; a newer job replaces it


def _values_of(enum: type[StrEnum], length: int) -> Enum:
    """A column that reads and writes ``enum`` members but stores their values in a
    VARCHAR(length), exactly as the plain string column before it (no migration, no CHECK
    constraint); a value no member has fails on reading, naming it."""
    return Enum(
        enum,
        native_enum=False,
        create_constraint=False,
        length=length,
        values_callable=lambda members: [member.value for member in members],
    )


class Base(DeclarativeBase):
    type_annotation_map = {datetime: DateTime(timezone=True)}


class Study(Base):
    __tablename__ = "studies"

    id: Mapped[int] = mapped_column(primary_key=True)
    study_uid: Mapped[str] = mapped_column(String(64), unique=True, index=True)
    patient_id: Mapped[str | None] = mapped_column(String(64))
    accession_number: Mapped[str | None] = mapped_column(String(64))
    # From the study's first instance, for DICOMweb queries and the worklist. Text, not
    # VARCHAR(n): an over-long value from a sender must not stop the instance being filed.
    patient_name: Mapped[str | None] = mapped_column(Text)
    patient_birth_date: Mapped[str | None] = mapped_column(Text)
    patient_sex: Mapped[str | None] = mapped_column(Text)
    study_date: Mapped[str | None] = mapped_column(Text, index=True)
    study_time: Mapped[str | None] = mapped_column(Text)
    study_description: Mapped[str | None] = mapped_column(Text)
    referring_physician: Mapped[str | None] = mapped_column(Text)
    dicom_study_id: Mapped[str | None] = mapped_column(Text)  # StudyID (0020,0010)
    state: Mapped[StudyState] = mapped_column(
        _values_of(StudyState, 16), default=StudyState.RECEIVING, index=True
    )
    first_received: Mapped[datetime] = mapped_column(default=utcnow)
    last_received: Mapped[datetime] = mapped_column(default=utcnow)
    # Instances the PACS says the study has (C-FIND NumberOfStudyRelatedInstances); None: unknown.
    expected_instances: Mapped[int | None] = mapped_column(Integer)
    expected_checked: Mapped[datetime | None] = mapped_column()
    note: Mapped[str | None] = mapped_column(Text)

    series: Mapped[list[Series]] = relationship(back_populates="study")
    jobs: Mapped[list[Job]] = relationship(back_populates="study")


class Series(Base):
    __tablename__ = "series"

    id: Mapped[int] = mapped_column(primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id"), index=True)
    series_uid: Mapped[str] = mapped_column(String(64), unique=True, index=True)
    modality: Mapped[str | None] = mapped_column(String(16))
    body_part: Mapped[str | None] = mapped_column(String(64))
    description: Mapped[str | None] = mapped_column(String(64))
    # backslash-joined, as DICOM writes it
    image_type: Mapped[str | None] = mapped_column(String(128))
    sop_class_uid: Mapped[str | None] = mapped_column(String(64))
    calling_ae: Mapped[str | None] = mapped_column(String(16))
    series_number: Mapped[int | None] = mapped_column(Integer)

    study: Mapped[Study] = relationship(back_populates="series")
    instances: Mapped[list[Instance]] = relationship(back_populates="series")


class Instance(Base):
    __tablename__ = "instances"

    id: Mapped[int] = mapped_column(primary_key=True)
    series_id: Mapped[int] = mapped_column(ForeignKey("series.id"), index=True)
    sop_uid: Mapped[str] = mapped_column(String(64), unique=True, index=True)
    sop_class_uid: Mapped[str] = mapped_column(String(64))
    transfer_syntax_uid: Mapped[str] = mapped_column(String(64))
    path: Mapped[str] = mapped_column(Text)
    received_at: Mapped[datetime] = mapped_column(default=utcnow)
    instance_number: Mapped[int | None] = mapped_column(Integer)
    rows: Mapped[int | None] = mapped_column(Integer)
    columns: Mapped[int | None] = mapped_column(Integer)
    number_of_frames: Mapped[int | None] = mapped_column(Integer)

    series: Mapped[Series] = relationship(back_populates="instances")


class Job(Base):
    __tablename__ = "jobs"

    id: Mapped[int] = mapped_column(primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id"), index=True)
    task: Mapped[Task] = mapped_column(_values_of(Task, 32))
    rule: Mapped[str] = mapped_column(String(128))
    series_uids: Mapped[list[str]] = mapped_column(JSON)
    save_inputs: Mapped[bool] = mapped_column(default=False)
    state: Mapped[JobState] = mapped_column(
        _values_of(JobState, 16), default=JobState.QUEUED, index=True
    )
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    worker: Mapped[str | None] = mapped_column(String(128))
    lease_until: Mapped[datetime | None] = mapped_column()
    retry_at: Mapped[datetime | None] = mapped_column()  # a failed delivery waits until then
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column()
    finished_at: Mapped[datetime | None] = mapped_column()
    # Result files written by the job; set once inference is done so a retry only redelivers.
    result_paths: Mapped[list[str] | None] = mapped_column(JSON)
    delivered: Mapped[bool] = mapped_column(default=False)  # every destination has them
    delivered_to: Mapped[list[str]] = mapped_column(JSON, default=list)  # destination names
    delivery_attempts: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[str | None] = mapped_column(Text)
    # What the pipeline wants a reader to know: dropped slices, context used, model label.
    # The task's model in node.pipeline.record, as JSON; read_record reads it back.
    record: Mapped[dict[str, object] | None] = mapped_column(JSON)

    study: Mapped[Study] = relationship(back_populates="jobs")


class ResultInstance(Base):
    """A result object the node made (SR, GSPS, SC), served by DICOMweb beside the study.

    Kept apart from ``instances``: those are what senders delivered, and they drive
    completeness and routing; the node's own results must never count as new work.
    """

    __tablename__ = "result_instances"

    id: Mapped[int] = mapped_column(primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id"), index=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id"), index=True)
    series_uid: Mapped[str] = mapped_column(String(64), index=True)
    sop_uid: Mapped[str] = mapped_column(String(64), unique=True, index=True)
    sop_class_uid: Mapped[str] = mapped_column(String(64))
    transfer_syntax_uid: Mapped[str] = mapped_column(String(64))
    modality: Mapped[str | None] = mapped_column(String(16))
    series_number: Mapped[int | None] = mapped_column(Integer)
    series_description: Mapped[str | None] = mapped_column(Text)
    instance_number: Mapped[int | None] = mapped_column(Integer)
    rows: Mapped[int | None] = mapped_column(Integer)
    columns: Mapped[int | None] = mapped_column(Integer)
    number_of_frames: Mapped[int | None] = mapped_column(Integer)
    path: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
