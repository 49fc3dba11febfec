"""Read-only checks behind the Dagster asset checks: does the money add up, does every
succeeded task carry its video."""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from grsai_pipeline.domain.ledger import account_violations, settled_batch_violations
from grsai_pipeline.domain.states import BatchStatus, TaskStatus
from grsai_pipeline.errors import UnknownBatch
from grsai_pipeline.store.batches import count_unfinished
from grsai_pipeline.store.db import reading
from grsai_pipeline.store.ledger import ledger_totals
from grsai_pipeline.store.schema import batch_jobs, credit_accounts, video_tasks


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
