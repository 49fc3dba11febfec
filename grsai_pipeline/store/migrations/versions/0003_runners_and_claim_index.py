"""Runners with heartbeats (claims of a dead runner are taken over fast), and the index that
makes a claim a range scan.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-23
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from grsai_pipeline.store.columns import UtcDateTime

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "pipeline_runners",
        sa.Column("runner_id", sa.String(64), primary_key=True),
        sa.Column("batch_job_id", sa.String(36), nullable=True),
        sa.Column("started_at", UtcDateTime, nullable=False),
        sa.Column("heartbeat_at", UtcDateTime, nullable=False),
        sa.Column("host", sa.Text, nullable=False),
        sa.Column("pid", sa.Integer, nullable=False),
    )
    op.create_index("ix_pipeline_runners_batch_job_id", "pipeline_runners", ["batch_job_id"])
    op.create_index(
        "ix_video_tasks_batch_status_index",
        "video_tasks",
        ["batch_job_id", "status", "batch_index"],
    )


def downgrade() -> None:
    op.drop_index("ix_video_tasks_batch_status_index", "video_tasks")
    op.drop_table("pipeline_runners")
