"""The tables of SPEC section 1 as they are now (the migrations build them step by step).

What makes "exactly once" true is here, in the database, not only in code:

- ``uq_credit_ledger_reserve``: one ``reserve`` per (task, reservation);
- ``uq_credit_ledger_close``: at most one ``charge`` or ``refund`` per (task, reservation);
- ``pk_idempotency_keys``: one answer per (user, idempotency key);
- CHECK constraints keep ``balance`` and ``held`` at or above zero and amounts positive;
- triggers (in the migrations) refuse UPDATE and DELETE on ``credit_ledger``.
"""

from __future__ import annotations

import sqlalchemy as sa

from grsai_pipeline.store.columns import UtcDateTime

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

metadata = sa.MetaData(naming_convention=NAMING)

# Integer primary keys autoincrement on SQLite only as INTEGER; BIGINT elsewhere.
LedgerId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

credit_accounts = sa.Table(
    "credit_accounts",
    metadata,
    sa.Column("user_id", sa.Text, primary_key=True),
    sa.Column("balance", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("held", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("updated_at", UtcDateTime, nullable=False),
    sa.CheckConstraint("balance >= 0", name="balance_not_negative"),
    sa.CheckConstraint("held >= 0", name="held_not_negative"),
)

batch_jobs = sa.Table(
    "batch_jobs",
    metadata,
    sa.Column("id", sa.String(36), primary_key=True),
    sa.Column("user_id", sa.Text, nullable=False, index=True),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("total_tasks", sa.Integer, nullable=False),
    sa.Column("reserved_credits", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("charged_credits", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("refunded_credits", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("created_at", UtcDateTime, nullable=False, index=True),
    sa.Column("updated_at", UtcDateTime, nullable=False),
    sa.Column("settled_at", UtcDateTime, nullable=True),
    sa.Column("error_message", sa.Text, nullable=True),
    # Ours: when the batch was cancelled; nothing of it is submitted after this.
    sa.Column("cancelled_at", UtcDateTime, nullable=True),
    sa.CheckConstraint("status IN ('pending', 'running', 'settled')", name="status_known"),
)

video_tasks = sa.Table(
    "video_tasks",
    metadata,
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
    # Ours: why a task failed (decides retries), when it went out, and who is submitting it.
    sa.Column("failure_kind", sa.String(32), nullable=True),
    sa.Column("submitted_at", UtcDateTime, nullable=True),
    sa.Column("not_found_since", UtcDateTime, nullable=True),
    # Ours: the last poll answer that left the task at the API (a change or not); whichever
    # runner follows it next polls the longest-waiting first.
    sa.Column("polled_at", UtcDateTime, nullable=True),
    # Ours: the runner that polls the task while it is at the API, until when (store/polls.py).
    sa.Column("polled_by", sa.String(64), nullable=True),
    sa.Column("poll_held_until", UtcDateTime, nullable=True),
    sa.Column("claimed_by", sa.String(64), nullable=True),
    sa.Column("claimed_at", UtcDateTime, nullable=True),
    sa.Column("possible_duplicates", sa.Integer, nullable=False, server_default="0"),
    # The archived copy of the video (SPEC 8): ``video_url`` expires about two hours after the
    # task finishes. ``archive_error`` is ours: why the last copy failed (``EXPIRED: ...`` for a
    # URL that no longer serves the video; those are not tried again).
    sa.Column("archived_url", sa.Text, nullable=True),
    sa.Column("archived_at", UtcDateTime, nullable=True),
    sa.Column("video_bytes", sa.BigInteger, nullable=True),
    sa.Column("video_sha256", sa.String(64), nullable=True),
    sa.Column("archive_error", sa.Text, nullable=True),
    # Ours: when the pipeline priced the task from the price table (at ``batch create``, or at
    # the intake of a batch written as rows); a task never priced is never claimed, never sent.
    sa.Column("priced_at", UtcDateTime, nullable=True),
    # Ours: the task's reservation, 1 for its first and one more per retry by backfill (the
    # ledger's ``reservation`` of its entries), bounded by GRSAI_MAX_BACKFILL_RETRIES.
    sa.Column("reservation", sa.Integer, nullable=False, server_default="1"),
    # Ours: when the task ended, at the earliest known (a poll's: the answer before the one
    # that said it ended; a callback's: its arrival), so a late poll does not stretch it;
    # with ``submitted_at``, how long tasks of a model take (store/durations.py: poll pacing).
    sa.Column("finished_at", UtcDateTime, nullable=True),
    sa.UniqueConstraint("batch_job_id", "batch_index", name="uq_video_tasks_batch_index"),
    sa.CheckConstraint(
        "status IN ('pending', 'queued', 'processing', 'succeeded', 'failed')", name="status_known"
    ),
    sa.CheckConstraint("progress BETWEEN 0 AND 100", name="progress_percent"),
    sa.CheckConstraint("price >= 0", name="price_not_negative"),
    sa.Index("ix_video_tasks_status_batch", "status", "batch_job_id"),
    # Claims walk one batch's waiting tasks in order: a range scan, never a sort of the batch.
    sa.Index("ix_video_tasks_batch_status_index", "batch_job_id", "status", "batch_index"),
    # The archiver's question, "which succeeded videos are not copied yet", without a scan.
    sa.Index(
        "ix_video_tasks_unarchived",
        "updated_at",
        sqlite_where=sa.text("status = 'succeeded' AND archived_url IS NULL"),
        postgresql_where=sa.text("status = 'succeeded' AND archived_url IS NULL"),
    ),
    # Recent succeeded tasks, newest first: the durations of each model.
    sa.Index(
        "ix_video_tasks_finished",
        "finished_at",
        sqlite_where=sa.text("status = 'succeeded'"),
        postgresql_where=sa.text("status = 'succeeded'"),
    ),
    # Tasks a web app wrote as rows and nobody has priced yet (store/intake.py): few, findable.
    sa.Index(
        "ix_video_tasks_unpriced",
        "batch_job_id",
        sqlite_where=sa.text("priced_at IS NULL"),
        postgresql_where=sa.text("priced_at IS NULL"),
    ),
)

# Who is working: every engine registers here and renews its heartbeat; a claim whose runner's
# heartbeat is older than GRSAI_CLAIM_LEASE_S may be taken over. ``batch_job_id`` is the one
# batch a per-batch run works on (NULL: a runner over every open batch).
pipeline_runners = sa.Table(
    "pipeline_runners",
    metadata,
    sa.Column("runner_id", sa.String(64), primary_key=True),
    sa.Column("batch_job_id", sa.String(36), nullable=True, index=True),
    sa.Column("started_at", UtcDateTime, nullable=False),
    sa.Column("heartbeat_at", UtcDateTime, nullable=False),
    sa.Column("host", sa.Text, nullable=False),
    sa.Column("pid", sa.Integer, nullable=False),
)

# A retried request (``batch create``, ``credits grant``) with the same key replays ``response``;
# the row is written in the transaction that did the work, and its key makes that happen once.
idempotency_keys = sa.Table(
    "idempotency_keys",
    metadata,
    sa.Column("user_id", sa.Text, primary_key=True),
    sa.Column("idempotency_key", sa.Text, primary_key=True),
    sa.Column("request", sa.String(32), nullable=False),
    sa.Column("request_sha256", sa.String(64), nullable=False),
    sa.Column("response", sa.JSON, nullable=False),
    sa.Column("created_at", UtcDateTime, nullable=False),
)

# The HTTP API's bearer tokens (SPEC 9): only each token's SHA-256 is kept, so a copy of the
# database lets no one in; a revoked token keeps its row (and its name) for the record.
api_tokens = sa.Table(
    "api_tokens",
    metadata,
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("token_sha256", sa.String(64), nullable=False, unique=True),
    sa.Column("created_at", UtcDateTime, nullable=False),
    sa.Column("revoked_at", UtcDateTime, nullable=True),
)

credit_ledger = sa.Table(
    "credit_ledger",
    metadata,
    sa.Column("id", LedgerId, primary_key=True, autoincrement=True),
    sa.Column("user_id", sa.Text, sa.ForeignKey("credit_accounts.user_id"), nullable=False),
    sa.Column("batch_job_id", sa.String(36), sa.ForeignKey("batch_jobs.id"), nullable=True),
    sa.Column("video_task_id", sa.String(36), sa.ForeignKey("video_tasks.id"), nullable=True),
    sa.Column("kind", sa.String(8), nullable=False),
    sa.Column("amount", sa.BigInteger, nullable=False),
    sa.Column("reservation", sa.Integer, nullable=True),
    # The journal: every entry one money movement wrote carries that movement's id.
    sa.Column("transaction_id", sa.String(64), nullable=False, index=True),
    sa.Column("created_at", UtcDateTime, nullable=False),
    sa.CheckConstraint("kind IN ('grant', 'reserve', 'charge', 'refund')", name="kind_known"),
    sa.CheckConstraint("amount > 0", name="amount_positive"),
    sa.CheckConstraint(
        "(kind = 'grant' AND reservation IS NULL AND video_task_id IS NULL)"
        " OR (kind <> 'grant' AND reservation IS NOT NULL AND reservation >= 1"
        " AND video_task_id IS NOT NULL AND batch_job_id IS NOT NULL)",
        name="task_entries_numbered",
    ),
    sa.Index("ix_credit_ledger_batch_job_id", "batch_job_id"),
    sa.Index("ix_credit_ledger_user_id", "user_id"),
    sa.Index(
        "uq_credit_ledger_reserve",
        "video_task_id",
        "reservation",
        unique=True,
        sqlite_where=sa.text("kind = 'reserve'"),
        postgresql_where=sa.text("kind = 'reserve'"),
    ),
    sa.Index(
        "uq_credit_ledger_close",
        "video_task_id",
        "reservation",
        unique=True,
        sqlite_where=sa.text("kind IN ('charge', 'refund')"),
        postgresql_where=sa.text("kind IN ('charge', 'refund')"),
    ),
)
