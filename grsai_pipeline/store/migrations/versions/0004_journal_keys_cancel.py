"""A journal (every ledger entry names its money movement), idempotency keys, and cancels.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-23

- ``credit_ledger.transaction_id`` (NOT NULL): the entries one money movement wrote together.
  Entries written before this revision get ``legacy-<first id>`` per (user, instant): every
  writer stamped one transaction's entries with one ``created_at``.
- ``idempotency_keys``: one row per (user, key), written in the transaction that did the work,
  so that a retried ``batch create`` or ``credits grant`` replays the first answer.
- ``batch_jobs.cancelled_at``: a cancelled batch is never submitted again.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from grsai_pipeline.store.columns import UtcDateTime

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

# The one UPDATE the append-only ledger ever sees: naming the transactions of older entries.
LEGACY_TRANSACTIONS = (
    "UPDATE credit_ledger SET transaction_id = 'legacy-' || ("
    " SELECT CAST(MIN(first.id) AS TEXT) FROM credit_ledger AS first"
    " WHERE first.user_id = credit_ledger.user_id"
    " AND first.created_at = credit_ledger.created_at)"
)
APPEND_ONLY_SQLITE = (
    "CREATE TRIGGER credit_ledger_no_{event} BEFORE {EVENT} ON credit_ledger"
    " BEGIN SELECT RAISE(ABORT, 'credit_ledger is append-only: {EVENT} refused'); END"
)


def upgrade() -> None:
    op.create_table(
        "idempotency_keys",
        sa.Column("user_id", sa.Text, nullable=False),
        sa.Column("idempotency_key", sa.Text, nullable=False),
        sa.Column("request", sa.String(32), nullable=False),
        sa.Column("request_sha256", sa.String(64), nullable=False),
        sa.Column("response", sa.JSON, nullable=False),
        sa.Column("created_at", UtcDateTime, nullable=False),
        sa.PrimaryKeyConstraint("user_id", "idempotency_key", name="pk_idempotency_keys"),
    )
    op.add_column("batch_jobs", sa.Column("cancelled_at", UtcDateTime, nullable=True))
    op.add_column("credit_ledger", sa.Column("transaction_id", sa.String(64), nullable=True))
    if op.get_bind().dialect.name == "postgresql":
        op.execute("ALTER TABLE credit_ledger DISABLE TRIGGER credit_ledger_append_only")
        op.execute(LEGACY_TRANSACTIONS)
        op.execute("ALTER TABLE credit_ledger ENABLE TRIGGER credit_ledger_append_only")
        op.alter_column("credit_ledger", "transaction_id", nullable=False)
    else:
        # SQLite: no trigger can be paused, and NOT NULL needs the table rebuilt (which drops
        # its triggers anyway): drop them, name the transactions, rebuild, put them back.
        for event in ("update", "delete"):
            op.execute(f"DROP TRIGGER credit_ledger_no_{event}")
        op.execute(LEGACY_TRANSACTIONS)
        with op.batch_alter_table("credit_ledger", recreate="always") as batch:
            batch.alter_column("transaction_id", existing_type=sa.String(64), nullable=False)
        for event in ("update", "delete"):
            op.execute(APPEND_ONLY_SQLITE.format(event=event, EVENT=event.upper()))
    op.create_index("ix_credit_ledger_transaction_id", "credit_ledger", ["transaction_id"])


def downgrade() -> None:
    raise NotImplementedError("the ledger is append-only; restore from a backup instead")
