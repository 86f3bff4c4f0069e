"""The index as releases before migrations created it (``create_all`` of node/store/models.py).

An index made by such a release has these tables and no ``alembic_version``; the node
stamps it with this revision and upgrades from there.

Revision ID: 0001
Revises: (none)
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

_TIME = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "studies",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("study_uid", sa.String(64), nullable=False),
        sa.Column("patient_id", sa.String(64), nullable=True),
        sa.Column("accession_number", sa.String(64), nullable=True),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("first_received", _TIME, nullable=False),
        sa.Column("last_received", _TIME, nullable=False),
        sa.Column("expected_instances", sa.Integer(), nullable=True),
        sa.Column("expected_checked", _TIME, nullable=True),
        sa.Column("note", sa.Text(), nullable=True),
    )
    op.create_index("ix_studies_study_uid", "studies", ["study_uid"], unique=True)
    op.create_index("ix_studies_state", "studies", ["state"])
    op.create_table(
        "series",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("study_id", sa.Integer(), sa.ForeignKey("studies.id"), nullable=False),
        sa.Column("series_uid", sa.String(64), nullable=False),
        sa.Column("modality", sa.String(16), nullable=True),
        sa.Column("body_part", sa.String(64), nullable=True),
        sa.Column("description", sa.String(64), nullable=True),
        sa.Column("image_type", sa.String(128), nullable=True),
        sa.Column("sop_class_uid", sa.String(64), nullable=True),
        sa.Column("calling_ae", sa.String(16), nullable=True),
    )
    op.create_index("ix_series_study_id", "series", ["study_id"])
    op.create_index("ix_series_series_uid", "series", ["series_uid"], unique=True)
    op.create_table(
        "instances",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("series_id", sa.Integer(), sa.ForeignKey("series.id"), nullable=False),
        sa.Column("sop_uid", sa.String(64), nullable=False),
        sa.Column("sop_class_uid", sa.String(64), nullable=False),
        sa.Column("transfer_syntax_uid", sa.String(64), nullable=False),
        sa.Column("path", sa.Text(), nullable=False),
        sa.Column("received_at", _TIME, nullable=False),
    )
    op.create_index("ix_instances_series_id", "instances", ["series_id"])
    op.create_index("ix_instances_sop_uid", "instances", ["sop_uid"], unique=True)
    op.create_table(
        "jobs",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("study_id", sa.Integer(), sa.ForeignKey("studies.id"), nullable=False),
        sa.Column("task", sa.String(32), nullable=False),
        sa.Column("rule", sa.String(128), nullable=False),
        sa.Column("series_uids", sa.JSON(), nullable=False),
        sa.Column("save_inputs", sa.Boolean(), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("worker", sa.String(128), nullable=True),
        sa.Column("lease_until", _TIME, nullable=True),
        sa.Column("retry_at", _TIME, nullable=True),
        sa.Column("created_at", _TIME, nullable=False),
        sa.Column("started_at", _TIME, nullable=True),
        sa.Column("finished_at", _TIME, nullable=True),
        sa.Column("result_paths", sa.JSON(), nullable=True),
        sa.Column("delivered", sa.Boolean(), nullable=False),
        sa.Column("delivered_to", sa.JSON(), nullable=False),
        sa.Column("delivery_attempts", sa.Integer(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("record", sa.JSON(), nullable=True),
    )
    op.create_index("ix_jobs_study_id", "jobs", ["study_id"])
    op.create_index("ix_jobs_state", "jobs", ["state"])


def downgrade() -> None:
    for table in ("jobs", "instances", "series", "studies"):
        op.drop_table(table)
