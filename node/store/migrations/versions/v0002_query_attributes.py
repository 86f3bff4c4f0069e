"""Attributes for DICOMweb queries and the worklist, and the node's own result objects.

Studies, series and instances filed before this revision keep NULL in the new columns
(their headers are not read again): they answer queries by UID, without patient or
date attributes. Results made before it are not in ``result_instances``.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

_STUDY_TEXT = (
    "patient_name",
    "patient_birth_date",
    "patient_sex",
    "study_date",
    "study_time",
    "study_description",
    "referring_physician",
    "dicom_study_id",
)
_INSTANCE_NUMBERS = ("instance_number", "rows", "columns", "number_of_frames")


# Plain ALTER TABLE ADD/DROP COLUMN (SQLite has both since 3.35): a batch "move and copy"
# would drop tables other tables' foreign keys point at.


def upgrade() -> None:
    for name in _STUDY_TEXT:
        op.add_column("studies", sa.Column(name, sa.Text(), nullable=True))
    op.create_index("ix_studies_study_date", "studies", ["study_date"])
    op.add_column("series", sa.Column("series_number", sa.Integer(), nullable=True))
    for name in _INSTANCE_NUMBERS:
        op.add_column("instances", sa.Column(name, sa.Integer(), nullable=True))
    op.create_table(
        "result_instances",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("study_id", sa.Integer(), sa.ForeignKey("studies.id"), nullable=False),
        sa.Column("job_id", sa.Integer(), sa.ForeignKey("jobs.id"), nullable=False),
        sa.Column("series_uid", sa.String(64), nullable=False),
        sa.Column("sop_uid", sa.String(64), nullable=False),
        sa.Column("sop_class_uid", sa.String(64), nullable=False),
        sa.Column("transfer_syntax_uid", sa.String(64), nullable=False),
        sa.Column("modality", sa.String(16), nullable=True),
        sa.Column("series_number", sa.Integer(), nullable=True),
        sa.Column("series_description", sa.Text(), nullable=True),
        sa.Column("instance_number", sa.Integer(), nullable=True),
        sa.Column("rows", sa.Integer(), nullable=True),
        sa.Column("columns", sa.Integer(), nullable=True),
        sa.Column("number_of_frames", sa.Integer(), nullable=True),
        sa.Column("path", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_result_instances_study_id", "result_instances", ["study_id"])
    op.create_index("ix_result_instances_job_id", "result_instances", ["job_id"])
    op.create_index("ix_result_instances_series_uid", "result_instances", ["series_uid"])
    op.create_index("ix_result_instances_sop_uid", "result_instances", ["sop_uid"], unique=True)


def downgrade() -> None:
    op.drop_table("result_instances")
    for name in _INSTANCE_NUMBERS:
        op.drop_column("instances", name)
    op.drop_column("series", "series_number")
    op.drop_index("ix_studies_study_date", "studies")
    for name in _STUDY_TEXT:
        op.drop_column("studies", name)
