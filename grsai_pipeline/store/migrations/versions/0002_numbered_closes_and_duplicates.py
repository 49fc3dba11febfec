"""Every task entry of the ledger carries a reservation number; tasks count possible duplicates.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22

- ``ck_credit_ledger_task_entries_numbered`` let ``reservation IS NULL`` through for task
  entries (``NULL >= 1`` is unknown, which a CHECK accepts), and the unique keys treat NULLs as
  distinct: an unnumbered entry escaped "exactly once". Now refused.
- ``video_tasks.possible_duplicates``: submits that may have reached the API twice (a runner
  died, or an answer was lost, before the remote id was recorded).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

NUMBERED = (
    "(kind = 'grant' AND reservation IS NULL AND video_task_id IS NULL)"
    " OR (kind <> 'grant' AND reservation IS NOT NULL AND reservation >= 1"
    " AND video_task_id IS NOT NULL AND batch_job_id IS NOT NULL)"
)
APPEND_ONLY_SQLITE = (
    "CREATE TRIGGER credit_ledger_no_{event} BEFORE {EVENT} ON credit_ledger"
    " BEGIN SELECT RAISE(ABORT, 'credit_ledger is append-only: {EVENT} refused'); END"
)


def upgrade() -> None:
    op.add_column(
        "video_tasks",
        sa.Column("possible_duplicates", sa.Integer, nullable=False, server_default="0"),
    )
    if op.get_bind().dialect.name == "postgresql":
        op.drop_constraint(
            op.f("ck_credit_ledger_task_entries_numbered"), "credit_ledger", type_="check"
        )
        op.create_check_constraint("task_entries_numbered", "credit_ledger", NUMBERED)
        return
    # SQLite cannot alter a CHECK: the table is rebuilt, which drops its triggers; put them back.
    for event in ("update", "delete"):
        op.execute(f"DROP TRIGGER credit_ledger_no_{event}")
    with op.batch_alter_table("credit_ledger", recreate="always") as batch:
        batch.drop_constraint(op.f("ck_credit_ledger_task_entries_numbered"), type_="check")
        batch.create_check_constraint("task_entries_numbered", NUMBERED)
    for event in ("update", "delete"):
        op.execute(APPEND_ONLY_SQLITE.format(event=event, EVENT=event.upper()))


def downgrade() -> None:
    raise NotImplementedError("the ledger is append-only; restore from a backup instead")
