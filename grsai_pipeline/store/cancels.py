"""Cancelling a batch: what was not sent fails and is refunded at once; what is at the API
finishes and settles as usual; nothing of the batch is ever submitted again.

"Not sent" means waiting (``pending`` or ``queued``) with no claim of a live runner: a task a
live runner has claimed may be on the wire already, so it is left to finish like one at the API.
Its runner records the submit's outcome; should the task come back to waiting (a submit that
failed and may be tried again), :func:`sweep_cancelled` fails it on the engine's next rescan.
Claims never take a task of a cancelled batch (``store.tasks``), and a backfill never retries one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from grsai_pipeline.domain.ledger import closing_entry
from grsai_pipeline.domain.lifecycle import WAITING, Cancelled, TaskState, decide
from grsai_pipeline.domain.states import BatchStatus, RetryPolicy
from grsai_pipeline.store.batches import lock_batch
from grsai_pipeline.store.columns import utc_now
from grsai_pipeline.store.ledger import open_reservations, record_transaction
from grsai_pipeline.store.runners import live_runners
from grsai_pipeline.store.schema import batch_jobs, video_tasks
from grsai_pipeline.store.settlement import settle_locked
from grsai_pipeline.store.tasks import apply_transitions

BY_THE_USER = "the batch was cancelled before this task was sent"


@dataclass(frozen=True)
class Cancel:
    """What ``batch cancel`` did; ``unchanged`` says why it did nothing (else None)."""

    batch_id: str
    unchanged: str | None
    cancelled_tasks: int = 0
    refunded_credits: int = 0
    # Tasks at the API (or on the wire) that finish and settle as usual.
    still_running: int = 0
    settled: bool = False


def cancel_batch(engine: Engine, batch_id: str, *, lease_s: float) -> Cancel:
    """Cancel the batch: fail and refund its unsent tasks in one transaction, and settle it
    at once when nothing of it is left at the API. A settled or cancelled batch is left as it is.
    """
    now = utc_now()
    with engine.begin() as conn:
        batch = lock_batch(conn, batch_id)
        if batch.cancelled_at is not None:
            return Cancel(batch_id, f"already cancelled at {batch.cancelled_at.isoformat()}")
        if batch.status == BatchStatus.SETTLED:
            return Cancel(batch_id, "already settled: every task is final and settled")
        conn.execute(
            batch_jobs.update()
            .where(batch_jobs.c.id == batch_id)
            .values(cancelled_at=now, updated_at=now)
        )
        cancelled, refunded = _fail_unsent(conn, batch_id, lease_s=lease_s, now=now)
        # With nothing of it left at the API no engine polls it again: the cancel that finished
        # its last task settles it, in this transaction (as intake does a refusal).
        settlement = settle_locked(conn, batch, now)
    return Cancel(batch_id, None, cancelled, refunded, settlement.unfinished, settlement.settled)


def sweep_cancelled(engine: Engine, batch_ids: Sequence[str], *, lease_s: float) -> int:
    """Fail and refund the unsent tasks of these cancelled batches (tasks that came back to
    waiting after the cancel); returns how many. One transaction per batch."""
    swept = 0
    for batch_id in batch_ids:
        now = utc_now()
        with engine.begin() as conn:
            batch = lock_batch(conn, batch_id)
            if batch.cancelled_at is not None:
                swept += _fail_unsent(conn, batch_id, lease_s=lease_s, now=now)[0]
    return swept


def cancelled_among(conn: Connection, batch_ids: Sequence[str]) -> set[str]:
    """Those of the batches that were cancelled."""
    found: set[str] = set()
    for start in range(0, len(batch_ids), 500):
        query = sa.select(batch_jobs.c.id).where(
            batch_jobs.c.id.in_(batch_ids[start : start + 500]),
            batch_jobs.c.cancelled_at.is_not(None),
        )
        found |= set(conn.scalars(query))
    return found


def _fail_unsent(
    conn: Connection, batch_id: str, *, lease_s: float, now: datetime
) -> tuple[int, int]:
    """In the caller's transaction (which holds the batch's lock): fail the batch's unsent
    tasks as cancelled and refund their reservations; returns (tasks, credits refunded)."""
    t = video_tasks.c
    live = live_runners(lease_s, now)
    unsent = conn.execute(
        sa.select(t.id, t.status)
        .where(
            t.batch_job_id == batch_id,
            t.status.in_(sorted(WAITING)),
            sa.or_(t.claimed_by.is_(None), t.claimed_by.not_in(live)),
        )
        .order_by(t.id)  # the order every writer locks task rows in
        .with_for_update(key_share=True)
    ).all()
    if not unsent:
        return 0, 0
    event = Cancelled(BY_THE_USER)
    policy = RetryPolicy()
    transitions = [
        decide(TaskState(row.id, row.status), event, now=now, policy=policy) for row in unsent
    ]
    apply_transitions(conn, [tr for tr in transitions if tr], runner_id=None, now=now)
    ids = {row.id for row in unsent}
    refunds = [
        entry
        for reservation in open_reservations(conn, batch_id)
        if reservation.video_task_id in ids and (entry := closing_entry(reservation))
    ]
    record_transaction(conn, refunds, now)
    return len(unsent), sum(entry.amount for entry in refunds)
