"""Which reservation each task is in (issue 24): 1 for its first, one more for each retry by
backfill, so a retry can be bounded (GRSAI_MAX_BACKFILL_RETRIES) and shown, free tasks
included (they have no ledger entries to count).

Existing tasks take the highest reservation their ``reserve`` entries name, else 1.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # A plain ADD COLUMN (a batch copy of the table would trip SQLite's foreign keys).
    op.add_column(
        "video_tasks",
        sa.Column("reservation", sa.Integer, nullable=False, server_default=sa.text("1")),
    )
    op.execute(
        "UPDATE video_tasks SET reservation = ("
        " SELECT MAX(l.reservation) FROM credit_ledger l"
        " WHERE l.video_task_id = video_tasks.id AND l.kind = 'reserve')"
        " WHERE EXISTS (SELECT 1 FROM credit_ledger l"
        " WHERE l.video_task_id = video_tasks.id AND l.kind = 'reserve')"
    )


def downgrade() -> None:
    with op.batch_alter_table("video_tasks") as batch:
        batch.drop_column("reservation")
