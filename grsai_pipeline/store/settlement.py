"""Settlement: charge what succeeded, refund what failed, exactly once per reservation."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy.engine import Connection, Engine, Row

from grsai_pipeline.domain.ledger import closing_entry
from grsai_pipeline.domain.states import BatchStatus
from grsai_pipeline.store.batches import count_unfinished, lock_batch
from grsai_pipeline.store.columns import utc_now
from grsai_pipeline.store.ledger import open_reservations, record_transaction
from grsai_pipeline.store.schema import batch_jobs


@dataclass(frozen=True)
class Settlement:
    """What one settlement attempt did. ``unfinished`` > 0 means it waited and wrote nothing."""

    batch_id: str
    status: str
    unfinished: int
    entries_written: int
    reserved_credits: int
    charged_credits: int
    refunded_credits: int

    @property
    def settled(self) -> bool:
        return self.status == BatchStatus.SETTLED


def settle_batch(engine: Engine, batch_id: str) -> Settlement:
    """Close every open reservation of a batch whose tasks are all final, and mark it settled.

    Safe to call at any time and from several runners at once: the batch row is locked for the
    transaction, and the ledger's unique keys refuse a second close of any reservation. A batch
    already settled with nothing open is left exactly as it is (no write at all).
    """
    with engine.begin() as conn:
        return settle_locked(conn, lock_batch(conn, batch_id), utc_now())


def settle_locked(conn: Connection, batch: Row[Any], now: datetime) -> Settlement:
    """:func:`settle_batch` in the caller's transaction, which holds ``batch``'s row lock."""
    batch_id = batch.id
    unfinished = count_unfinished(conn, [batch_id])
    if unfinished:
        return Settlement(
            batch_id,
            batch.status,
            unfinished,
            0,
            batch.reserved_credits,
            batch.charged_credits,
            batch.refunded_credits,
        )
    entries = [e for r in open_reservations(conn, batch_id) if (e := closing_entry(r))]
    if batch.status == BatchStatus.SETTLED and not entries:
        return Settlement(
            batch_id,
            batch.status,
            0,
            0,
            batch.reserved_credits,
            batch.charged_credits,
            batch.refunded_credits,
        )
    record_transaction(conn, entries, now)
    settled = conn.execute(
        batch_jobs.update()
        .where(batch_jobs.c.id == batch_id)
        .values(status=BatchStatus.SETTLED.value, settled_at=now, updated_at=now)
        .returning(
            batch_jobs.c.reserved_credits,
            batch_jobs.c.charged_credits,
            batch_jobs.c.refunded_credits,
        )
    ).one()
    return Settlement(batch_id, BatchStatus.SETTLED.value, 0, len(entries), *settled)
