"""Getting a batch ready to run: retries of a settled batch, and rows from other writers.

A run or backfill of a settled batch retries its failed tasks whose failure is retryable
(``BACKFILL_RETRYABLE``): each gets a new reservation (reserve again, ``reservation`` + 1),
goes back to ``pending`` with a fresh attempt budget, and the batch goes back to ``running``.
A task whose price the balance cannot cover stays failed, with a message saying so, and can be
retried by a later run once credits are granted.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from grsai_pipeline.domain.ledger import EntryKind, LedgerEntry
from grsai_pipeline.domain.states import (
    BACKFILL_RETRYABLE,
    QUEUED,
    BatchStatus,
    FailureKind,
    TaskStatus,
)
from grsai_pipeline.domain.tasks import InvalidTask
from grsai_pipeline.store.claims import task_spec_of
from grsai_pipeline.store.columns import utc_now
from grsai_pipeline.store.errors import UnknownBatch
from grsai_pipeline.store.ledger import lock_balance, next_reservation_numbers, write_entries
from grsai_pipeline.store.schema import batch_jobs, video_tasks

INSUFFICIENT_CREDITS = "INSUFFICIENT_CREDITS:"


@dataclass(frozen=True)
class Preparation:
    """What getting the batch ready did."""

    retried: int = 0
    retry_credits: int = 0
    short_of_credits: int = 0
    requeued: int = 0
    invalid: int = 0


def prepare_batch(engine: Engine, batch_id: str) -> Preparation:
    """Retry a settled batch's retryable failures, turn ``queued`` rows into ``pending``, and
    fail pending rows that break a rule of SPEC 2 (their reservations are refunded when the
    batch settles). Writes nothing when there is nothing to do."""
    now = utc_now()
    t = video_tasks.c
    retried = credits = short = 0
    with engine.begin() as conn:
        batch = conn.execute(
            sa.select(batch_jobs).where(batch_jobs.c.id == batch_id).with_for_update()
        ).one_or_none()
        if batch is None:
            raise UnknownBatch(batch_id)
        if batch.status == BatchStatus.SETTLED:
            retried, credits, short = _start_retries(conn, batch_id, batch.user_id, now)
    # A second transaction that locks task rows only: claims lock task rows and then the batch
    # row, so holding the batch row while waiting for task rows could deadlock with them.
    with engine.begin() as conn:
        requeued = conn.execute(
            video_tasks.update()
            .where(t.batch_job_id == batch_id, t.status == QUEUED)
            .values(status=TaskStatus.PENDING.value, updated_at=now)
        ).rowcount
        waiting = conn.execute(
            sa.select(
                t.id, t.prompt, t.model, t.reference_url, t.aspect_ratio, t.duration, t.meta
            ).where(t.batch_job_id == batch_id, t.status == TaskStatus.PENDING.value)
        ).all()
        invalid = []
        for row in waiting:
            try:
                task_spec_of(row)
            except InvalidTask as exc:
                invalid.append({"task_id": row.id, "message": str(exc)})
        if invalid:
            conn.execute(
                video_tasks.update()
                .where(t.id == sa.bindparam("task_id"), t.status == TaskStatus.PENDING.value)
                .values(
                    status=TaskStatus.FAILED.value,
                    error_message=sa.bindparam("message"),
                    failure_kind=FailureKind.INVALID_INPUT.value,
                    claimed_by=None,
                    claimed_at=None,
                    updated_at=now,
                ),
                invalid,
            )
    return Preparation(retried, credits, short, requeued, len(invalid))


def _start_retries(
    conn: sa.Connection, batch_id: str, user_id: str, now: datetime
) -> tuple[int, int, int]:
    t = video_tasks.c
    failed = conn.execute(
        sa.select(t.id, t.price, t.error_message)
        .where(
            t.batch_job_id == batch_id,
            t.status == TaskStatus.FAILED.value,
            t.failure_kind.in_([kind.value for kind in BACKFILL_RETRYABLE]),
        )
        .order_by(t.batch_index)
    ).all()
    if not failed:
        return 0, 0, 0
    balance = lock_balance(conn, user_id) or 0
    numbers = next_reservation_numbers(conn, [row.id for row in failed])
    entries, retried_ids, short = [], [], []
    for row in failed:
        if row.price > balance:
            short.append(
                {
                    "task_id": row.id,
                    "message": f"{INSUFFICIENT_CREDITS} a retry needs {row.price} credits but the"
                    f" balance is {balance} (last error: {_last_error(row.error_message)})",
                }
            )
            continue
        balance -= row.price
        retried_ids.append(row.id)
        if row.price > 0:
            entries.append(
                LedgerEntry(
                    user_id, EntryKind.RESERVE, row.price, batch_id, row.id, numbers[row.id]
                )
            )
    if short:
        conn.execute(
            video_tasks.update()
            .where(t.id == sa.bindparam("task_id"))
            .values(error_message=sa.bindparam("message"), updated_at=now),
            short,
        )
    if not retried_ids:
        return 0, 0, len(short)
    write_entries(conn, entries, now)
    conn.execute(
        video_tasks.update()
        .where(t.id.in_(retried_ids))
        .values(
            status=TaskStatus.PENDING.value,
            attempts=0,
            progress=0,
            grsai_task_id=None,
            submitted_at=None,
            not_found_since=None,
            video_url=None,
            updated_at=now,
        )
    )
    credits = sum(e.amount for e in entries)
    conn.execute(
        batch_jobs.update()
        .where(batch_jobs.c.id == batch_id)
        .values(
            status=BatchStatus.RUNNING.value,
            reserved_credits=batch_jobs.c.reserved_credits + credits,
            settled_at=None,
            updated_at=now,
        )
    )
    return len(retried_ids), credits, len(short)


def _last_error(message: str | None) -> str:
    """The task's own last error, without an earlier INSUFFICIENT_CREDITS wrapper."""
    text = message or "unknown"
    marker = "(last error: "
    if text.startswith(INSUFFICIENT_CREDITS) and marker in text:
        return text.split(marker, 1)[1].removesuffix(")")
    return text
