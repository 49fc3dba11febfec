"""Intake: a batch a web app wrote as rows is priced and paid for before any task of it is sent.

``batch create`` prices and reserves as it writes (``store.batches``). A web app that writes
``batch_jobs`` and ``video_tasks`` rows itself (SPEC 1, "Batches written as rows") leaves its
tasks unpriced (``priced_at`` NULL) and reserves nothing; whichever engine or run meets such a
batch first calls :func:`take_in_batch`, which, in one transaction under the batch's row lock:

- validates every unpriced waiting task (invalid ones fail ``INVALID_INPUT:`` at price 0);
- prices the valid ones from the price table (a ``price`` the writer put on a row is not used);
- reserves them all under one ``transaction_id`` (reservation 1), or, when the balance cannot
  cover them all, refuses them all: ``failed`` with ``INSUFFICIENT_CREDITS: ...``, nothing
  reserved;
- settles the batch when nothing of it is left unfinished.

A row its writer reserved itself (an open ``reserve`` already) is priced at that reservation and
not reserved again. A row stored as ``queued`` after it was priced only becomes ``pending``. A
second caller finds nothing unpriced and writes nothing; the unique reserve key backs that up.
Claims (``store.tasks``) take only priced tasks whose reservation holds its ``reserve``, so a
task that slipped past intake is still never sent unpaid.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from grsai_pipeline.domain.ledger import EntryKind, LedgerEntry
from grsai_pipeline.domain.lifecycle import (
    INSUFFICIENT_CREDITS_PREFIX,
    WAITING,
    TakenIn,
    TaskState,
    decide,
)
from grsai_pipeline.domain.pricing import PriceTable
from grsai_pipeline.domain.states import QUEUED, FailureKind, RetryPolicy
from grsai_pipeline.domain.tasks import TASK_FIELDS
from grsai_pipeline.store.batches import lock_batch
from grsai_pipeline.store.columns import utc_now
from grsai_pipeline.store.ledger import (
    ensure_account,
    lock_balance,
    next_reservation_numbers,
    open_reservations,
    record_transaction,
)
from grsai_pipeline.store.schema import batch_jobs, video_tasks
from grsai_pipeline.store.settlement import settle_locked
from grsai_pipeline.store.tasks import apply_transitions, validate_row

t = video_tasks.c


@dataclass(frozen=True)
class Intake:
    """What one intake did; all zero when there was nothing to take in."""

    batch_id: str
    priced: int = 0
    invalid: int = 0
    reserved_credits: int = 0
    # The INSUFFICIENT_CREDITS message when the batch was refused whole (else None).
    refused: str | None = None


# Waiting and never priced; or priced but stored as ``queued`` (by an operator, or a writer
# that reserved the row itself), which only becomes ``pending``, as SPEC 1 says it means.
_AWAITING = sa.or_(
    sa.and_(t.priced_at.is_(None), t.status.in_(sorted(WAITING))), t.status == QUEUED
)


def awaiting_intake(conn: Connection, batch_ids: Collection[str] | None = None) -> list[str]:
    """Batches with waiting tasks nobody has priced yet, or stored as ``queued`` (of
    ``batch_ids``, when given)."""
    query = sa.select(t.batch_job_id).where(_AWAITING)
    found = sorted(set(conn.scalars(query.distinct())))
    if batch_ids is None:
        return found
    return [b for b in found if b in batch_ids]


def take_in_batch(engine: Engine, batch_id: str, prices: PriceTable) -> Intake:
    """Price and reserve the batch's unpriced waiting tasks, all or none (see the module)."""
    now = utc_now()
    with engine.begin() as conn:
        batch = lock_batch(conn, batch_id)
        if batch.cancelled_at is not None:
            return Intake(batch_id)  # its waiting tasks fail as cancelled (store/cancels.py)
        rows = conn.execute(
            sa.select(t.id, t.status, t.price, t.priced_at, *map(t.get, TASK_FIELDS))
            .where(t.batch_job_id == batch_id, _AWAITING)
            .order_by(t.id)  # the order every writer locks task rows in
            .with_for_update(key_share=True)
        ).all()
        if not rows:
            return Intake(batch_id)
        # Reserved by their writer already (the older way of writing rows): paid, not again.
        held = {r.video_task_id: r.amount for r in open_reservations(conn, batch_id)}
        events: dict[str, TakenIn] = {}
        valid: dict[str, int] = {}  # price of each valid task
        for row in rows:
            if row.priced_at is not None:
                events[row.id] = TakenIn(row.price)  # paid for or not as it was: claims check
                continue
            spec, reason = validate_row(row)
            if spec is None:
                assert reason is not None
                # Any reservation it holds is refunded when the batch settles.
                events[row.id] = TakenIn(held.get(row.id, 0), (FailureKind.INVALID_INPUT, reason))
            else:
                valid[row.id] = held.get(row.id) or prices.price_of(spec)
        to_reserve = {task_id: price for task_id, price in valid.items() if task_id not in held}
        needed = sum(to_reserve.values())
        ensure_account(conn, batch.user_id, now)
        balance = lock_balance(conn, batch.user_id) or 0
        refused = None
        if needed > balance:
            refused = (
                f"{INSUFFICIENT_CREDITS_PREFIX} the batch needs {needed} credits but the"
                f" balance is {balance}; nothing was reserved or sent"
            )
            refusal = (FailureKind.INSUFFICIENT_CREDITS, refused)
            events |= {task_id: TakenIn(price, refusal) for task_id, price in valid.items()}
            to_reserve = {}
        else:
            events |= {task_id: TakenIn(price) for task_id, price in valid.items()}
        policy = RetryPolicy()
        transitions = [
            decide(TaskState(row.id, row.status), events[row.id], now=now, policy=policy)
            for row in rows
        ]
        apply_transitions(conn, [tr for tr in transitions if tr], runner_id=None, now=now)
        numbers = next_reservation_numbers(conn, sorted(to_reserve))
        entries = [
            LedgerEntry(
                batch.user_id, EntryKind.RESERVE, price, batch_id, task_id, numbers[task_id]
            )
            for task_id, price in sorted(to_reserve.items())
            if price > 0
        ]
        record_transaction(conn, entries, now)
        if refused is not None:
            conn.execute(
                batch_jobs.update()
                .where(batch_jobs.c.id == batch_id)
                .values(error_message=refused, updated_at=now)
            )
        settle_locked(conn, lock_batch(conn, batch_id), now)
    reserved = sum(entry.amount for entry in entries)
    invalid = sum(
        1 for e in events.values() if e.refusal and e.refusal[0] is FailureKind.INVALID_INPUT
    )
    return Intake(batch_id, len(valid), invalid, reserved, refused)
