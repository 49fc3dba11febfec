"""The journal: the one place where money moves. :func:`record_transaction` appends the entries
of one money movement under one ``transaction_id`` and moves the account balances and batch
money columns they imply (nothing else writes ``balance``, ``held`` or a batch's credit columns).

Every caller passes an open transaction; entries and the columns they move commit or roll
back together. The unique keys and CHECK constraints of the schema are the last word: a second
close of a reservation, or a balance below zero, makes the whole transaction fail.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.engine import Connection
from sqlalchemy.sql.selectable import NamedFromClause

from grsai_pipeline.domain.ledger import (
    AccountChange,
    EntryKind,
    LedgerEntry,
    LedgerTotals,
    OpenReservation,
    account_change,
)
from grsai_pipeline.errors import UnknownAccount
from grsai_pipeline.store.db import is_postgres
from grsai_pipeline.store.schema import batch_jobs, credit_accounts, credit_ledger, video_tasks


def ensure_account(conn: Connection, user_id: str, now: datetime) -> None:
    """Create the user's account with nothing in it, unless it exists."""
    values = {"user_id": user_id, "balance": 0, "held": 0, "updated_at": now}
    if is_postgres(conn):
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        conn.execute(pg_insert(credit_accounts).values(values).on_conflict_do_nothing())
    else:
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert

        conn.execute(sqlite_insert(credit_accounts).values(values).on_conflict_do_nothing())


def lock_balance(conn: Connection, user_id: str) -> int | None:
    """The account's balance, locked until commit (PostgreSQL row lock; SQLite holds the
    database write lock from BEGIN IMMEDIATE already)."""
    query = (
        sa.select(credit_accounts.c.balance)
        .where(credit_accounts.c.user_id == user_id)
        .with_for_update()
    )
    return conn.execute(query).scalar_one_or_none()


def record_transaction(
    conn: Connection, entries: Sequence[LedgerEntry], now: datetime
) -> str | None:
    """Append ``entries`` as one journal transaction and move each account and batch
    accordingly, in the caller's transaction; returns the ``transaction_id`` (None: no entry)."""
    if not entries:
        return None
    transaction_id = str(uuid.uuid4())
    conn.execute(
        credit_ledger.insert(),
        [
            {
                "user_id": e.user_id,
                "batch_job_id": e.batch_job_id,
                "video_task_id": e.video_task_id,
                "kind": e.kind.value,
                "amount": e.amount,
                "reservation": e.reservation,
                "transaction_id": transaction_id,
                "created_at": now,
            }
            for e in entries
        ],
    )
    per_user: dict[str, list[LedgerEntry]] = defaultdict(list)
    for entry in entries:
        per_user[entry.user_id].append(entry)
    for user_id, user_entries in sorted(per_user.items()):
        _move_account(conn, user_id, account_change(user_entries), now)
    # A batch's credit columns are its ledger's sums, so a reservation another writer made
    # (SPEC 2: other writers insert rows) is counted too.
    for batch_id in sorted({e.batch_job_id for e in entries if e.batch_job_id is not None}):
        totals = ledger_totals(conn, batch_id=batch_id)
        conn.execute(
            batch_jobs.update()
            .where(batch_jobs.c.id == batch_id)
            .values(
                reserved_credits=totals.reserves,
                charged_credits=totals.charges,
                refunded_credits=totals.refunds,
                updated_at=now,
            )
        )
    return transaction_id


def _move_account(conn: Connection, user_id: str, change: AccountChange, now: datetime) -> None:
    if change == AccountChange():
        return
    result = conn.execute(
        credit_accounts.update()
        .where(credit_accounts.c.user_id == user_id)
        .values(
            balance=credit_accounts.c.balance + change.balance,
            held=credit_accounts.c.held + change.held,
            updated_at=now,
        )
    )
    if result.rowcount != 1:
        raise UnknownAccount(user_id)


def is_closed(reserves: NamedFromClause) -> sa.Exists:
    """Whether the ``reserve`` entry of the alias ``reserves`` has its ``charge`` or
    ``refund``: SQL for a statement over ``reserves`` (open reservations, paid before sent)."""
    closes = credit_ledger.alias("closes")
    return (
        sa.select(closes.c.id)
        .where(
            closes.c.video_task_id == reserves.c.video_task_id,
            closes.c.reservation == reserves.c.reservation,
            # Inline kinds: SQLite uses the partial index uq_credit_ledger_close only when the
            # query's condition names its very values (a bound parameter scans the ledger).
            closes.c.kind.in_([sa.literal_column("'charge'"), sa.literal_column("'refund'")]),
        )
        .exists()
    )


def open_reservations(conn: Connection, batch_id: str) -> list[OpenReservation]:
    """Reservations of the batch with no charge or refund yet, with their task's status."""
    reserves = credit_ledger.alias("reserves")
    query = (
        sa.select(
            reserves.c.user_id,
            reserves.c.batch_job_id,
            reserves.c.video_task_id,
            reserves.c.reservation,
            reserves.c.amount,
            video_tasks.c.status,
        )
        .join(video_tasks, video_tasks.c.id == reserves.c.video_task_id)
        .where(
            reserves.c.batch_job_id == batch_id,
            reserves.c.kind == EntryKind.RESERVE.value,
            ~is_closed(reserves),
        )
        .order_by(reserves.c.id)
    )
    return [
        OpenReservation(
            user_id=row.user_id,
            batch_job_id=row.batch_job_id,
            video_task_id=row.video_task_id,
            reservation=row.reservation,
            amount=row.amount,
            task_status=row.status,
        )
        for row in conn.execute(query)
    ]


def next_reservation_numbers(conn: Connection, task_ids: Sequence[str]) -> dict[str, int]:
    """For each task, the number its next reservation takes (1 when it never had one)."""
    if not task_ids:
        return {}
    query = (
        sa.select(credit_ledger.c.video_task_id, sa.func.max(credit_ledger.c.reservation))
        .where(
            credit_ledger.c.video_task_id.in_(task_ids),
            # Inline, so that SQLite may use the partial index uq_credit_ledger_reserve.
            credit_ledger.c.kind == sa.literal_column("'reserve'"),
        )
        .group_by(credit_ledger.c.video_task_id)
    )
    highest = {task_id: number for task_id, number in conn.execute(query)}
    return {task_id: highest.get(task_id, 0) + 1 for task_id in task_ids}


def ledger_totals(
    conn: Connection, *, batch_id: str | None = None, user_id: str | None = None
) -> LedgerTotals:
    """Sums per kind for one batch or one account."""
    query = sa.select(
        credit_ledger.c.kind, sa.func.coalesce(sa.func.sum(credit_ledger.c.amount), 0)
    )
    if batch_id is not None:
        query = query.where(credit_ledger.c.batch_job_id == batch_id)
    if user_id is not None:
        query = query.where(credit_ledger.c.user_id == user_id)
    sums = {kind: int(total) for kind, total in conn.execute(query.group_by(credit_ledger.c.kind))}
    return LedgerTotals.of(sums)


@dataclass(frozen=True)
class LedgerRow:
    id: int
    transaction_id: str
    user_id: str
    batch_job_id: str | None
    video_task_id: str | None
    batch_index: int | None
    kind: str
    amount: int
    reservation: int | None
    created_at: datetime


def list_entries(conn: Connection, *, user_id: str, batch_id: str | None = None) -> list[LedgerRow]:
    """The account's ledger (one batch's part of it, when given), oldest first, with each
    task's place in its batch."""
    query = (
        sa.select(
            credit_ledger.c.id,
            credit_ledger.c.transaction_id,
            credit_ledger.c.user_id,
            credit_ledger.c.batch_job_id,
            credit_ledger.c.video_task_id,
            video_tasks.c.batch_index,
            credit_ledger.c.kind,
            credit_ledger.c.amount,
            credit_ledger.c.reservation,
            credit_ledger.c.created_at,
        )
        .outerjoin(video_tasks, video_tasks.c.id == credit_ledger.c.video_task_id)
        .where(credit_ledger.c.user_id == user_id)
        .order_by(credit_ledger.c.id)
    )
    if batch_id is not None:
        query = query.where(credit_ledger.c.batch_job_id == batch_id)
    return [LedgerRow(**row._mapping) for row in conn.execute(query)]


@dataclass(frozen=True)
class LedgerLine:
    """A ledger entry with the account as it stood after it."""

    entry: LedgerRow
    balance: int
    held: int


def running_ledger(entries: Sequence[LedgerRow]) -> list[LedgerLine]:
    """Each entry (oldest first, the account's whole ledger) with the balance after it."""
    lines, balance, held = [], 0, 0
    for row in entries:
        change = account_change([LedgerEntry(row.user_id, EntryKind(row.kind), row.amount)])
        balance, held = balance + change.balance, held + change.held
        lines.append(LedgerLine(row, balance, held))
    return lines
