"""Who polls each task at the API, decided per task in the database (issue 22): the runner
that holds its poll (``polled_by``) until ``poll_held_until``. Any live engine may take a
task whose hold ended or whose holder stopped beating, whatever runs of its batch exist.

Existing tasks are held by nobody: the next engine to read them takes them.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from grsai_pipeline.store.columns import UtcDateTime

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("video_tasks") as batch:
        batch.add_column(sa.Column("polled_by", sa.String(64), nullable=True))
        batch.add_column(sa.Column("poll_held_until", UtcDateTime, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("video_tasks") as batch:
        batch.drop_column("poll_held_until")
        batch.drop_column("polled_by")
