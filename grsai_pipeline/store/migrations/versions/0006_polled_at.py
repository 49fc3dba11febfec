"""When each task at the API was last polled, so that whichever runner follows it next polls
the longest-waiting tasks first (issue 10: a re-polling run hands over to the next one).

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from grsai_pipeline.store.columns import UtcDateTime

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("video_tasks") as batch:
        batch.add_column(sa.Column("polled_at", UtcDateTime, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("video_tasks") as batch:
        batch.drop_column("polled_at")
