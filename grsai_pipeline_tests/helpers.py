"""Test helpers that read the tables directly, independent of the code under test."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa

from grsai_pipeline.config import load_settings
from grsai_pipeline.store.accounts import grant_credits
from grsai_pipeline.store.batches import create_batch


def new_batch(
    engine: sa.Engine, tasks: Sequence[Any], *, user: str = "alice", credits: int = 10_000
) -> str:
    """Grant ``credits`` to ``user`` and create a batch of ``tasks``; returns its id."""
    grant_credits(engine, user, credits)
    return create_batch(engine, user, tasks, load_settings().price_table).batch_id


def rows(engine: sa.Engine, sql: str, **params: Any) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(sa.text(sql), params)]


def assert_ledger_invariants(engine: sa.Engine) -> None:
    """SPEC 1's invariants, computed with plain SQL from the four tables."""
    accounts = rows(
        engine,
        """
        SELECT a.user_id, a.balance, a.held,
               COALESCE(SUM(CASE WHEN l.kind = 'grant' THEN l.amount END), 0) AS grants,
               COALESCE(SUM(CASE WHEN l.kind = 'reserve' THEN l.amount END), 0) AS reserves,
               COALESCE(SUM(CASE WHEN l.kind = 'charge' THEN l.amount END), 0) AS charges,
               COALESCE(SUM(CASE WHEN l.kind = 'refund' THEN l.amount END), 0) AS refunds
        FROM credit_accounts a LEFT JOIN credit_ledger l ON l.user_id = a.user_id
        GROUP BY a.user_id, a.balance, a.held
        """,
    )
    for a in accounts:
        assert a["balance"] == a["grants"] - a["reserves"] + a["refunds"], a
        assert a["held"] == a["reserves"] - a["charges"] - a["refunds"], a
        assert a["balance"] >= 0 and a["held"] >= 0, a
    per_reservation = rows(
        engine,
        """
        SELECT video_task_id, reservation,
               SUM(CASE WHEN kind = 'reserve' THEN 1 ELSE 0 END) AS reserves,
               SUM(CASE WHEN kind IN ('charge', 'refund') THEN 1 ELSE 0 END) AS closes
        FROM credit_ledger WHERE kind <> 'grant'
        GROUP BY video_task_id, reservation
        """,
    )
    for r in per_reservation:
        assert r["reserves"] == 1 and r["closes"] <= 1, r
    settled = rows(
        engine,
        """
        SELECT b.id, b.reserved_credits, b.charged_credits, b.refunded_credits,
               COALESCE(SUM(CASE WHEN l.kind = 'reserve' THEN l.amount END), 0) AS reserves,
               COALESCE(SUM(CASE WHEN l.kind = 'charge' THEN l.amount END), 0) AS charges,
               COALESCE(SUM(CASE WHEN l.kind = 'refund' THEN l.amount END), 0) AS refunds,
               (SELECT COUNT(*) FROM video_tasks t WHERE t.batch_job_id = b.id
                 AND t.status IN ('pending', 'queued', 'processing')) AS unfinished
        FROM batch_jobs b LEFT JOIN credit_ledger l ON l.batch_job_id = b.id
        WHERE b.status = 'settled'
        GROUP BY b.id, b.reserved_credits, b.charged_credits, b.refunded_credits
        """,
    )
    for b in settled:
        assert b["reserved_credits"] == b["charged_credits"] + b["refunded_credits"], b
        assert (b["reserves"], b["charges"], b["refunds"]) == (
            b["reserved_credits"], b["charged_credits"], b["refunded_credits"],
        ), b  # fmt: skip
        assert b["unfinished"] == 0, b


def ledger_kinds(engine: sa.Engine, batch_id: str) -> dict[str, int]:
    """How many entries of each kind the batch has."""
    counts = rows(
        engine,
        "SELECT kind, COUNT(*) AS n FROM credit_ledger WHERE batch_job_id = :b GROUP BY kind",
        b=batch_id,
    )
    return {r["kind"]: r["n"] for r in counts}


def table_snapshot(engine: sa.Engine) -> dict[str, list[dict[str, Any]]]:
    """Every row of the four tables, to compare before and after."""
    names = ("credit_accounts", "batch_jobs", "video_tasks", "credit_ledger")
    return {name: rows(engine, f"SELECT * FROM {name} ORDER BY 1") for name in names}


def write_rows_batch(
    engine: sa.Engine,
    user: str,
    tasks: Sequence[dict[str, Any]],
    *,
    status: str = "queued",
    price: int | None = None,
) -> str:
    """A batch as a web app writes it (SPEC 1, "Batches written as rows"): one ``batch_jobs``
    row and its ``video_tasks`` rows in one transaction, plain SQL, no credit entries, and the
    writer's own ``price`` when given (never trusted); returns the batch id."""
    batch_id = str(uuid.uuid4())
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO batch_jobs (id, user_id, status, total_tasks, created_at, updated_at)"
                " VALUES (:id, :user, 'pending', :total, CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)"
            ),
            {"id": batch_id, "user": user, "total": len(tasks)},
        )
        for index, task in enumerate(tasks):
            columns = ["id", "user_id", "batch_job_id", "batch_index", "status", *task]
            values = {"id": str(uuid.uuid4()), "user_id": user, "batch_job_id": batch_id}
            values |= {"batch_index": index, "status": status, **task}
            if price is not None:
                columns.append("price")
                values["price"] = price
            conn.execute(
                sa.text(
                    f"INSERT INTO video_tasks ({', '.join(columns)}, created_at, updated_at)"
                    f" VALUES ({', '.join(':' + c for c in columns)},"
                    " CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)"
                ),
                values,
            )
    return batch_id
