"""The first schema: the four tables of SPEC 1, their unique keys and the append-only ledger.

Revision ID: 0001
Revises:
Create Date: 2026-11-22

Frozen: later changes go into new revisions, never here.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from grsai_pipeline.store.columns import UtcDateTime

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "credit_accounts",
        sa.Column("user_id", sa.Text, primary_key=True),
        sa.Column("balance", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("held", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("updated_at", UtcDateTime, nullable=False),
        sa.CheckConstraint("balance >= 0", name="balance_not_negative"),
        sa.CheckConstraint("held >= 0", name="held_not_negative"),
    )
    op.create_table(
        "batch_jobs",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("user_id", sa.Text, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("total_tasks", sa.Integer, nullable=False),
        sa.Column("reserved_credits", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("charged_credits", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("refunded_credits", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("created_at", UtcDateTime, nullable=False),
        sa.Column("updated_at", UtcDateTime, nullable=False),
        sa.Column("settled_at", UtcDateTime, nullable=True),
        sa.Column("error_message", sa.Text, nullable=True),
        sa.CheckConstraint("status IN ('pending', 'running', 'settled')", name="status_known"),
    )
    op.create_index("ix_batch_jobs_user_id", "batch_jobs", ["user_id"])
    op.create_index("ix_batch_jobs_created_at", "batch_jobs", ["created_at"])
    op.create_table(
        "video_tasks",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("user_id", sa.Text, nullable=False),
        sa.Column("batch_job_id", sa.String(36), sa.ForeignKey("batch_jobs.id"), nullable=False),
        sa.Column("batch_index", sa.Integer, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("prompt", sa.Text, nullable=True),
        sa.Column("model", sa.Text, nullable=True),
        sa.Column("reference_url", sa.Text, nullable=True),
        sa.Column("aspect_ratio", sa.Text, nullable=True),
        sa.Column("duration", sa.Integer, nullable=True),
        sa.Column("meta", sa.JSON, nullable=True),
        sa.Column("video_url", sa.Text, nullable=True),
        sa.Column("error_message", sa.Text, nullable=True),
        sa.Column("grsai_task_id", sa.Text, nullable=True),
        sa.Column("progress", sa.Integer, nullable=False, server_default="0"),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("price", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("created_at", UtcDateTime, nullable=False),
        sa.Column("updated_at", UtcDateTime, nullable=False),
        sa.Column("failure_kind", sa.String(32), nullable=True),
        sa.Column("submitted_at", UtcDateTime, nullable=True),
        sa.Column("not_found_since", UtcDateTime, nullable=True),
        sa.Column("claimed_by", sa.String(64), nullable=True),
        sa.Column("claimed_at", UtcDateTime, nullable=True),
        sa.UniqueConstraint("batch_job_id", "batch_index", name="uq_video_tasks_batch_index"),
        sa.CheckConstraint(
            "status IN ('pending', 'queued', 'processing', 'succeeded', 'failed')",
            name="status_known",
        ),
        sa.CheckConstraint("progress BETWEEN 0 AND 100", name="progress_percent"),
        sa.CheckConstraint("price >= 0", name="price_not_negative"),
    )
    op.create_index("ix_video_tasks_status_batch", "video_tasks", ["status", "batch_job_id"])
    op.create_table(
        "credit_ledger",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            primary_key=True,
            autoincrement=True,
        ),
        sa.Column("user_id", sa.Text, sa.ForeignKey("credit_accounts.user_id"), nullable=False),
        sa.Column("batch_job_id", sa.String(36), sa.ForeignKey("batch_jobs.id"), nullable=True),
        sa.Column("video_task_id", sa.String(36), sa.ForeignKey("video_tasks.id"), nullable=True),
        sa.Column("kind", sa.String(8), nullable=False),
        sa.Column("amount", sa.BigInteger, nullable=False),
        sa.Column("reservation", sa.Integer, nullable=True),
        sa.Column("created_at", UtcDateTime, nullable=False),
        sa.CheckConstraint("kind IN ('grant', 'reserve', 'charge', 'refund')", name="kind_known"),
        sa.CheckConstraint("amount > 0", name="amount_positive"),
        sa.CheckConstraint(
            "(kind = 'grant' AND reservation IS NULL AND video_task_id IS NULL)"
            " OR (kind <> 'grant' AND reservation >= 1 AND video_task_id IS NOT NULL"
            " AND batch_job_id IS NOT NULL)",
            name="task_entries_numbered",
        ),
    )
    op.create_index("ix_credit_ledger_batch_job_id", "credit_ledger", ["batch_job_id"])
    op.create_index("ix_credit_ledger_user_id", "credit_ledger", ["user_id"])
    for name, kinds in (
        ("uq_credit_ledger_reserve", "kind = 'reserve'"),
        ("uq_credit_ledger_close", "kind IN ('charge', 'refund')"),
    ):
        op.create_index(
            name,
            "credit_ledger",
            ["video_task_id", "reservation"],
            unique=True,
            sqlite_where=sa.text(kinds),
            postgresql_where=sa.text(kinds),
        )
    _make_ledger_append_only()


def _make_ledger_append_only() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(
            "CREATE FUNCTION credit_ledger_append_only() RETURNS trigger LANGUAGE plpgsql AS $$"
            " BEGIN RAISE EXCEPTION 'credit_ledger is append-only: % refused', TG_OP; END $$"
        )
        op.execute(
            "CREATE TRIGGER credit_ledger_append_only BEFORE UPDATE OR DELETE ON credit_ledger"
            " FOR EACH ROW EXECUTE FUNCTION credit_ledger_append_only()"
        )
        op.execute(
            "CREATE TRIGGER credit_ledger_no_truncate BEFORE TRUNCATE ON credit_ledger"
            " FOR EACH STATEMENT EXECUTE FUNCTION credit_ledger_append_only()"
        )
        return
    for event in ("UPDATE", "DELETE"):
        op.execute(
            f"CREATE TRIGGER credit_ledger_no_{event.lower()} BEFORE {event} ON credit_ledger"
            f" BEGIN SELECT RAISE(ABORT, 'credit_ledger is append-only: {event} refused'); END"
        )


def downgrade() -> None:
    raise NotImplementedError("the ledger is append-only; restore from a backup instead")
