"""Read-only checks behind the Dagster asset checks and ``db verify``: does the money add up,
does every succeeded task carry its video."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from grsai_pipeline.domain.ledger import (
    EntryKind,
    LedgerTotals,
    TaskPayment,
    account_violations,
    settled_batch_violations,
    task_payment_violations,
)
from grsai_pipeline.domain.states import BatchStatus, TaskStatus
from grsai_pipeline.errors import UnknownBatch
from grsai_pipeline.store.batches import count_unfinished
from grsai_pipeline.store.db import reading
from grsai_pipeline.store.ledger import ledger_totals
from grsai_pipeline.store.schema import batch_jobs, credit_accounts, credit_ledger, video_tasks
from grsai_pipeline.store.tasks import unfinished_per_batch


def ledger_problems(engine: Engine, batch_id: str) -> list[str]:
    """Every broken invariant of SPEC 1 for the batch and its user's account; [] when none."""
    with reading(engine) as conn:
        batch = conn.execute(sa.select(batch_jobs).where(batch_jobs.c.id == batch_id)).one_or_none()
        if batch is None:
            raise UnknownBatch(batch_id)
        account = conn.execute(
            sa.select(credit_accounts).where(credit_accounts.c.user_id == batch.user_id)
        ).one_or_none()
        problems = []
        if account is not None:
            totals = ledger_totals(conn, user_id=batch.user_id)
            problems += [
                f"account {batch.user_id}: {p}"
                for p in account_violations(account.balance, account.held, totals)
            ]
        if batch.status == BatchStatus.SETTLED:
            unfinished = count_unfinished(conn, [batch_id])
            problems += settled_batch_violations(
                batch.reserved_credits,
                batch.charged_credits,
                batch.refunded_credits,
                ledger_totals(conn, batch_id=batch_id),
                unfinished,
            )
        problems += task_payment_problems(conn, batch_id)
    return problems


def succeeded_without_video(engine: Engine, batch_id: str) -> list[int]:
    """``batch_index`` of every succeeded task that has no ``video_url``."""
    return succeeded_without_video_in(engine, [batch_id])[batch_id]


def succeeded_without_video_in(engine: Engine, batch_ids: Sequence[str]) -> dict[str, list[int]]:
    """The same for several batches, in one query."""
    t = video_tasks.c
    missing: dict[str, list[int]] = {b: [] for b in batch_ids}
    query = (
        sa.select(t.batch_job_id, t.batch_index)
        .where(
            t.batch_job_id.in_(batch_ids),
            t.status == TaskStatus.SUCCEEDED.value,
            sa.or_(t.video_url.is_(None), t.video_url == ""),
        )
        .order_by(t.batch_job_id, t.batch_index)
    )
    with reading(engine) as conn:
        for batch_id, index in conn.execute(query):
            missing[batch_id].append(index)
    return missing


def verify_ledger(engine: Engine) -> list[str]:
    """Every account's ``balance``/``held`` and every batch's credit columns recomputed from the
    ledger, and every settled batch's invariants of SPEC 1: each difference as a sentence."""
    problems: list[str] = []
    with reading(engine) as conn:
        per_user = _totals_by(conn, credit_ledger.c.user_id)
        for account in conn.execute(sa.select(credit_accounts).order_by(credit_accounts.c.user_id)):
            totals = per_user.get(account.user_id, LedgerTotals())
            problems += [
                f"account {account.user_id}: {p}"
                for p in account_violations(account.balance, account.held, totals)
            ]
        per_batch = _totals_by(conn, credit_ledger.c.batch_job_id)
        unfinished = unfinished_per_batch(conn, None)
        for batch in conn.execute(sa.select(batch_jobs).order_by(batch_jobs.c.created_at)):
            totals = per_batch.get(batch.id, LedgerTotals())
            columns = (batch.reserved_credits, batch.charged_credits, batch.refunded_credits)
            if batch.status == BatchStatus.SETTLED:
                found = settled_batch_violations(*columns, totals, unfinished.get(batch.id, 0))
            elif columns != (totals.reserves, totals.charges, totals.refunds):
                found = [
                    f"batch columns {columns} != ledger sums "
                    f"({totals.reserves}, {totals.charges}, {totals.refunds})"
                ]
            else:
                found = []
            problems += [f"batch {batch.id}: {p}" for p in found]
        problems += task_payment_problems(conn, None)
    return problems


def task_payment_problems(conn: Connection, batch_id: str | None) -> list[str]:
    """Every task of the batch (of every batch when None) whose money breaks SPEC 1's "Paid
    before sent" or was not settled as its status says, each sentence naming the task."""
    entry = credit_ledger.c
    t = video_tasks.c
    current = sa.select(
        entry.video_task_id, sa.func.max(entry.reservation).label("reservation")
    ).where(entry.kind == EntryKind.RESERVE.value)
    if batch_id is not None:
        current = current.where(entry.batch_job_id == batch_id)
    latest = current.group_by(entry.video_task_id).subquery("latest")
    closes = credit_ledger.alias("closes")
    query = (
        sa.select(
            t.id,
            t.batch_job_id,
            t.batch_index,
            t.status,
            t.price,
            t.grsai_task_id,
            latest.c.reservation,
            closes.c.kind,
            batch_jobs.c.status.label("batch_status"),
        )
        .join(batch_jobs, batch_jobs.c.id == t.batch_job_id)
        .outerjoin(latest, latest.c.video_task_id == t.id)
        .outerjoin(
            closes,
            sa.and_(
                closes.c.video_task_id == t.id,
                closes.c.reservation == latest.c.reservation,
                closes.c.kind.in_([EntryKind.CHARGE.value, EntryKind.REFUND.value]),
            ),
        )
        .order_by(batch_jobs.c.created_at, t.batch_job_id, t.batch_index)
    )
    if batch_id is not None:
        query = query.where(t.batch_job_id == batch_id)
    problems = []
    for row in conn.execute(query):
        payment = TaskPayment(
            status=row.status,
            price=row.price,
            grsai_task_id=row.grsai_task_id,
            reservation=row.reservation,
            closed_by=row.kind,
            batch_settled=row.batch_status == BatchStatus.SETTLED,
        )
        problems += [
            f"task {row.id} (batch {row.batch_job_id} #{row.batch_index}): {p}"
            for p in task_payment_violations(payment)
        ]
    return problems


def _totals_by(conn: Connection, key: sa.ColumnElement[Any]) -> dict[str, LedgerTotals]:
    entry = credit_ledger.c
    sums: dict[str, dict[str, int]] = {}
    query = sa.select(key, entry.kind, sa.func.sum(entry.amount)).where(key.is_not(None))
    for owner, kind, total in conn.execute(query.group_by(key, entry.kind)):
        sums.setdefault(owner, {})[kind] = int(total)
    return {owner: LedgerTotals.of(kinds) for owner, kinds in sums.items()}
