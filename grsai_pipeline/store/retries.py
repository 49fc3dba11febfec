"""Retries by backfill: a run of a settled batch retries its retryable failures.

Each failed task whose failure may be retried (``BACKFILL_RETRYABLE``) gets a new reservation
(reserve again, ``reservation`` + 1), goes back to ``pending`` with a fresh attempt budget, and
the batch goes back to ``running`` until it settles again. A task whose price the balance
cannot cover stays failed and says so; a later run retries it once credits are granted. A
cancelled batch is never retried.
"""

from __future__ import annotations

from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from grsai_pipeline.domain.ledger import EntryKind, LedgerEntry
from grsai_pipeline.domain.lifecycle import (
    RetriedByBackfill,
    RetryRefused,
    TaskState,
    Transition,
    decide,
)
from grsai_pipeline.domain.states import BACKFILL_RETRYABLE, BatchStatus, RetryPolicy, TaskStatus
from grsai_pipeline.store.batches import lock_batch
from grsai_pipeline.store.columns import utc_now
from grsai_pipeline.store.ledger import lock_balance, next_reservation_numbers, record_transaction
from grsai_pipeline.store.schema import batch_jobs, video_tasks
from grsai_pipeline.store.tasks import apply_transitions


@dataclass(frozen=True)
class RetryStart:
    """What a retry by backfill started: tasks sent back to pending and the credits reserved
    for them, and tasks the balance could not cover."""

    retried: int = 0
    retry_credits: int = 0
    short_of_credits: int = 0


def retry_failed_tasks(engine: Engine, batch_id: str) -> RetryStart:
    """Retry a settled batch's retryable failures, each with a new reservation, in one
    transaction. Writes nothing for a batch that is not settled or has nothing to retry."""
    now = utc_now()
    t = video_tasks.c
    policy = RetryPolicy()
    with engine.begin() as conn:
        batch = lock_batch(conn, batch_id)
        if batch.status != BatchStatus.SETTLED or batch.cancelled_at is not None:
            return RetryStart()  # a cancelled batch is never submitted again
        failed = conn.execute(
            sa.select(t.id, t.batch_index, t.price, t.error_message)
            .where(
                t.batch_job_id == batch_id,
                t.status == TaskStatus.FAILED.value,
                t.failure_kind.in_([kind.value for kind in BACKFILL_RETRYABLE]),
            )
            .order_by(t.id)  # the order every writer locks task rows in
            .with_for_update(key_share=True)
        ).all()
        failed = sorted(failed, key=lambda row: row.batch_index)
        if not failed:
            return RetryStart()
        balance = lock_balance(conn, batch.user_id) or 0
        numbers = next_reservation_numbers(conn, [row.id for row in failed])
        entries: list[LedgerEntry] = []
        transitions: list[Transition | None] = []
        short = 0
        for row in failed:
            task = TaskState(row.id, TaskStatus.FAILED.value, error_message=row.error_message)
            if row.price > balance:
                short += 1
                event: RetriedByBackfill | RetryRefused = RetryRefused(row.price, balance)
            else:
                balance -= row.price
                event = RetriedByBackfill()
            transitions.append(decide(task, event, now=now, policy=policy))
            if isinstance(event, RetryRefused):
                continue
            if row.price > 0:
                entries.append(
                    LedgerEntry(
                        batch.user_id,
                        EntryKind.RESERVE,
                        row.price,
                        batch_id,
                        row.id,
                        numbers[row.id],
                    )
                )
        apply_transitions(conn, [tr for tr in transitions if tr], runner_id=None, now=now)
        retried = len(failed) - short
        if retried:
            record_transaction(conn, entries, now)
            conn.execute(
                batch_jobs.update()
                .where(batch_jobs.c.id == batch_id)
                .values(status=BatchStatus.RUNNING.value, settled_at=None, updated_at=now)
            )
    return RetryStart(retried, sum(e.amount for e in entries), short)
