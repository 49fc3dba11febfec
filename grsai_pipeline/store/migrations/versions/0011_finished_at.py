"""When the API said a task ended (issue 25): with ``submitted_at``, how long recent tasks of
each model took, which the engine reads to poll a task when its video is likely ready.

Existing succeeded tasks take their ``updated_at``, the best guess left.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from grsai_pipeline.store.columns import UtcDateTime

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # A plain ADD COLUMN (a batch copy of the table would trip SQLite's foreign keys).
    op.add_column("video_tasks", sa.Column("finished_at", UtcDateTime, nullable=True))
    op.execute(
        "UPDATE video_tasks SET finished_at = updated_at"
        " WHERE status = 'succeeded' AND submitted_at IS NOT NULL"
    )
    op.create_index(
        "ix_video_tasks_finished",
        "video_tasks",
        ["finished_at"],
        sqlite_where=sa.text("status = 'succeeded'"),
        postgresql_where=sa.text("status = 'succeeded'"),
    )


def downgrade() -> None:
    op.drop_index("ix_video_tasks_finished", table_name="video_tasks")
    with op.batch_alter_table("video_tasks") as batch:
        batch.drop_column("finished_at")
