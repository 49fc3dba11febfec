"""When the pipeline priced each task from the price table: at ``batch create``, or when it
took in a batch the web app wrote as rows (issue 21). A task never priced is never sent.

Existing tasks count as priced, but those still waiting with no ``reserve`` entry: they were
written as rows and never paid for, and the next engine to see them prices and reserves them
(or refuses their batch for want of credits) before any of them is sent.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from grsai_pipeline.store.columns import UtcDateTime

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

# Tasks waiting to be priced: a handful at any time, among millions.
UNPRICED = "priced_at IS NULL"


def upgrade() -> None:
    with op.batch_alter_table("video_tasks") as batch:
        batch.add_column(sa.Column("priced_at", UtcDateTime, nullable=True))
    op.execute(
        "UPDATE video_tasks SET priced_at = created_at"
        " WHERE status NOT IN ('pending', 'queued')"
        " OR EXISTS (SELECT 1 FROM credit_ledger WHERE credit_ledger.video_task_id = video_tasks.id"
        " AND credit_ledger.kind = 'reserve')"
    )
    # SPEC 1: ``queued`` means pending; claims look for pending rows only, and from now on the
    # intake turns every queued row it prices into pending.
    op.execute(
        "UPDATE video_tasks SET status = 'pending'"
        " WHERE status = 'queued' AND priced_at IS NOT NULL"
    )
    op.create_index(
        "ix_video_tasks_unpriced",
        "video_tasks",
        ["batch_job_id"],
        sqlite_where=sa.text(UNPRICED),
        postgresql_where=sa.text(UNPRICED),
    )


def downgrade() -> None:
    op.drop_index("ix_video_tasks_unpriced", "video_tasks")
    with op.batch_alter_table("video_tasks") as batch:
        batch.drop_column("priced_at")
