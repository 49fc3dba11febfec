"""Archived copies of the videos: where each succeeded task's video was copied, when, its size
and SHA-256, and why it could not be copied.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-23
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from grsai_pipeline.store.columns import UtcDateTime

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

# Succeeded videos not archived yet: few at any time, among millions of tasks.
UNARCHIVED = "status = 'succeeded' AND archived_url IS NULL"


def upgrade() -> None:
    with op.batch_alter_table("video_tasks") as batch:
        batch.add_column(sa.Column("archived_url", sa.Text, nullable=True))
        batch.add_column(sa.Column("archived_at", UtcDateTime, nullable=True))
        batch.add_column(sa.Column("video_bytes", sa.BigInteger, nullable=True))
        batch.add_column(sa.Column("video_sha256", sa.String(64), nullable=True))
        batch.add_column(sa.Column("archive_error", sa.Text, nullable=True))
    op.create_index(
        "ix_video_tasks_unarchived",
        "video_tasks",
        ["updated_at"],
        sqlite_where=sa.text(UNARCHIVED),
        postgresql_where=sa.text(UNARCHIVED),
    )


def downgrade() -> None:
    op.drop_index("ix_video_tasks_unarchived", "video_tasks")
    with op.batch_alter_table("video_tasks") as batch:
        for name in ("archive_error", "video_sha256", "video_bytes", "archived_at", "archived_url"):
            batch.drop_column(name)
