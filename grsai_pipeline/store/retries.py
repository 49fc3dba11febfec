"""Retries by backfill: a run of a settled batch retries its retryable failures.

Each failed task whose failure may be retried (``BACKFILL_RETRYABLE``) gets a new reservation
(reserve again, ``reservation`` + 1), goes back to ``pending`` with a fresh attempt budget, and
the batch goes back to ``running`` until it settles again. A task whose price the balance
cannot cover stays failed and says so; a later run retries it once credits are granted. A
task is retried at most ``GRSAI_MAX_BACKFILL_RETRIES`` times (``video_tasks.reservation``
counts them); then its failure is final, and its message says so. A cancelled batch is never
retried.
"""

from __future__ import annotations

from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from grsai_pipeline.domain.ledger import EntryKind, LedgerEntry
from grsai_pipeline.domain.lifecycle import (
    RetriedByBackfill,
    RetriesExhausted,
    RetryRefused,
    TaskState,
    Transition,
    decide,
)
from grsai_pipeline.domain.states import BACKFILL_RETRYABLE, BatchStatus, RetryPolicy, TaskStatus
from grsai_pipeline.store.batches import lock_batch
from grsai_pipeline.store.columns import utc_now
from grsai_pipeline.store.db import reading
from grsai_pipeline.store.ledger import lock_balance, record_transaction
from grsai_pipeline.store.schema import batch_jobs, video_tasks
from grsai_pipeline.store.tasks import apply_transitions


@dataclass(frozen=True)
class RetryStart:
    """What a retry by backfill started: tasks sent back to pending and the credits reserved
    for them, and tasks the balance could not cover."""

    retried: int = 0
    retry_credits: int = 0
    short_of_credits: int = 0
    # Retryable failures past GRSAI_MAX_BACKFILL_RETRIES: final now, and their message says so.
    final: int = 0


def batches_to_retry(engine: Engine) -> list[str]:
    """Settled, uncancelled batches holding a failure of a kind a retry by backfill takes,
    oldest first: what one launch of ``retry_failed_batches`` retries (or marks final, for
    tasks out of retries)."""
    b, t = batch_jobs.c, video_tasks.c
    query = (
        sa.select(b.id)
        .where(
            b.status == BatchStatus.SETTLED.value,
            b.cancelled_at.is_(None),
            sa.exists().where(
                t.batch_job_id == b.id,
                t.status == TaskStatus.FAILED.value,
                t.failure_kind.in_([kind.value for kind in BACKFILL_RETRYABLE]),
            ),
        )
        .order_by(b.created_at, b.id)
    )
    with reading(engine) as conn:
        return list(conn.scalars(query))


def retry_failed_tasks(engine: Engine, batch_id: str, policy: RetryPolicy) -> RetryStart:
    """Retry a settled batch's retryable failures, each with a new reservation, in one
    transaction; those retried ``policy.max_backfill_retries`` times already stay failed for
    good and say so. Writes nothing for a batch that is not settled or has nothing to retry."""
    now = utc_now()
    t = video_tasks.c
    with engine.begin() as conn:
        batch = lock_batch(conn, batch_id)
        if batch.status != BatchStatus.SETTLED or batch.cancelled_at is not None:
            return RetryStart()  # a cancelled batch is never submitted again
        failed = conn.execute(
            sa.select(t.id, t.batch_index, t.price, t.error_message, t.reservation)
            .where(
                t.batch_job_id == batch_id,
                t.status == TaskStatus.FAILED.value,
                t.failure_kind.in_([kind.value for kind in BACKFILL_RETRYABLE]),
            )
            .order_by(t.id)  # the order every writer locks task rows in
            .with_for_update(key_share=True)
        ).all()
        failed = sorted(failed, key=lambda row: row.batch_index)
        exhausted = [row for row in failed if not policy.may_retry_by_backfill(row.reservation)]
        failed = [row for row in failed if policy.may_retry_by_backfill(row.reservation)]
        transitions: list[Transition | None] = [
            decide(
                TaskState(row.id, TaskStatus.FAILED.value, error_message=row.error_message),
                RetriesExhausted(row.reservation - 1),
                now=now,
                policy=policy,
            )
            for row in exhausted
        ]
        if not failed:
            apply_transitions(conn, [tr for tr in transitions if tr], runner_id=None, now=now)
            return RetryStart(final=len(exhausted))
        balance = lock_balance(conn, batch.user_id) or 0
        entries: list[LedgerEntry] = []
        short = 0
        for row in failed:
            task = TaskState(row.id, TaskStatus.FAILED.value, error_message=row.error_message)
            if row.price > balance:
                short += 1
                event: RetriedByBackfill | RetryRefused = RetryRefused(row.price, balance)
            else:
                balance -= row.price
                event = RetriedByBackfill(row.reservation + 1)
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
                        event.reservation,
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
    return RetryStart(retried, sum(e.amount for e in entries), short, len(exhausted))
