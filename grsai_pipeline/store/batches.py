"""Batches: creation with its reservations in one transaction, and what a person reads back."""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine, Row

from grsai_pipeline.domain.ledger import EntryKind, LedgerEntry
from grsai_pipeline.domain.pricing import PriceTable
from grsai_pipeline.domain.states import (
    FINAL_STATUSES,
    QUEUED,
    UNFINISHED_STATUSES,
    BatchStatus,
    FailureKind,
    TaskStatus,
)
from grsai_pipeline.domain.tasks import TaskSpec, validate_task
from grsai_pipeline.errors import InsufficientCredits, InvalidInput, InvalidTask, UnknownBatch
from grsai_pipeline.store.columns import utc_now
from grsai_pipeline.store.db import reading
from grsai_pipeline.store.idempotency import Answer, Keyed, once
from grsai_pipeline.store.ledger import ensure_account, lock_balance, record_transaction
from grsai_pipeline.store.schema import batch_jobs, video_tasks

TASK_STATUSES = tuple(s.value for s in TaskStatus)


@dataclass(frozen=True)
class NewBatch:
    batch_id: str
    total_tasks: int
    invalid_tasks: int
    reserved_credits: int
    # True when an idempotency key replayed an earlier request's answer (nothing written).
    replayed: bool = False


def create_batch(
    engine: Engine,
    user_id: str,
    tasks: Sequence[object],
    prices: PriceTable,
    *,
    idempotency_key: str | None = None,
) -> NewBatch:
    """Write a batch, its tasks and one ``reserve`` per valid task, all or nothing.

    Invalid tasks are stored at once as ``failed`` with price 0 and reserve nothing. If the
    balance cannot cover the valid tasks, nothing is written and InsufficientCredits is raised.
    With ``idempotency_key``, a repeat of the same request returns the first batch and writes
    nothing; the key with other tasks raises IdempotencyConflict.
    """
    if not tasks:
        raise InvalidInput("tasks", "must hold at least one task")
    if not user_id.strip():
        raise InvalidInput("user", "must not be empty")
    keyed = None
    if idempotency_key is not None:
        keyed = Keyed.of(user_id, idempotency_key, "batch_create", {"tasks": list(tasks)})
    now = utc_now()
    batch_id = str(uuid.uuid4())
    rows, entries = [], []
    for index, raw in enumerate(tasks):
        task_id = str(uuid.uuid4())
        try:
            spec = validate_task(raw)
        except InvalidTask as exc:
            rows.append(_invalid_task_row(raw, str(exc)))
        else:
            price = prices.price_of(spec)
            rows.append(_valid_task_row(spec, price))
            if price > 0:
                entries.append(
                    LedgerEntry(user_id, EntryKind.RESERVE, price, batch_id, task_id, reservation=1)
                )
        rows[-1].update(
            id=task_id,
            user_id=user_id,
            batch_job_id=batch_id,
            batch_index=index,
            attempts=0,
            progress=0,
            created_at=now,
            updated_at=now,
            priced_at=now,
        )
    needed = sum(e.amount for e in entries)
    invalid = sum(1 for r in rows if r["status"] == TaskStatus.FAILED)

    def create(conn: Connection) -> Answer:
        ensure_account(conn, user_id, now)
        balance = lock_balance(conn, user_id) or 0
        if balance < needed:
            raise InsufficientCredits(user_id, balance, needed)
        conn.execute(
            batch_jobs.insert().values(
                id=batch_id,
                user_id=user_id,
                status=BatchStatus.PENDING.value,
                total_tasks=len(rows),
                reserved_credits=0,  # the reservations below add to it
                charged_credits=0,
                refunded_credits=0,
                created_at=now,
                updated_at=now,
            )
        )
        conn.execute(video_tasks.insert(), rows)
        record_transaction(conn, entries, now)
        return {
            "batch_id": batch_id,
            "total_tasks": len(rows),
            "invalid_tasks": invalid,
            "reserved_credits": needed,
        }

    answer, replayed = once(engine, keyed, create)
    return NewBatch(**answer, replayed=replayed)


def _valid_task_row(spec: TaskSpec, price: int) -> dict[str, Any]:
    return {
        "status": TaskStatus.PENDING.value,
        "prompt": spec.prompt,
        "model": spec.model,
        "reference_url": spec.reference_url,
        "aspect_ratio": spec.aspect_ratio,
        "duration": spec.duration,
        "meta": spec.meta,
        "price": price,
        # executemany takes its columns from the first row: every row names the same keys.
        "error_message": None,
        "failure_kind": None,
    }


def _invalid_task_row(raw: object, message: str) -> dict[str, Any]:
    """Keep what can be stored of an invalid task, so a person sees what was sent."""
    fields: Mapping[str, Any] = raw if isinstance(raw, Mapping) else {}
    duration = fields.get("duration")
    meta = fields.get("meta")
    return {
        "status": TaskStatus.FAILED.value,
        "prompt": _storable_text(fields.get("prompt")),
        "model": _storable_text(fields.get("model")),
        "reference_url": _storable_text(fields.get("reference_url")),
        "aspect_ratio": _storable_text(fields.get("aspect_ratio")),
        "duration": duration
        if isinstance(duration, int)
        and not isinstance(duration, bool)
        and -(2**31) < duration < 2**31
        else None,
        "meta": dict(meta) if isinstance(meta, Mapping) else None,
        "price": 0,
        "error_message": message,
        "failure_kind": FailureKind.INVALID_INPUT.value,
    }


def _storable_text(value: object) -> str | None:
    if not isinstance(value, str) or "\x00" in value:
        return None
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return None
    return value


@dataclass(frozen=True)
class TaskView:
    id: str
    batch_index: int
    status: str
    model: str | None
    prompt: str | None
    video_url: str | None
    error_message: str | None
    attempts: int
    progress: int
    price: int
    grsai_task_id: str | None
    possible_duplicates: int
    # The archived copy of the video (SPEC 8), once made.
    archived_url: str | None
    archived_at: datetime | None
    video_bytes: int | None
    video_sha256: str | None
    archive_error: str | None
    # 1 for the task's first reservation, one more per retry by backfill.
    reservation: int


@dataclass(frozen=True)
class BatchView:
    """A batch as ``batch status`` and the Dagster metadata show it."""

    batch_id: str
    user_id: str
    status: str
    total_tasks: int
    reserved_credits: int
    charged_credits: int
    refunded_credits: int
    created_at: datetime
    settled_at: datetime | None
    cancelled_at: datetime | None
    error_message: str | None
    progress_percent: float
    # Submits that may have reached the API twice (a claim taken over from a dead runner, an
    # answer lost on the wire: store/tasks.py); 0 in a quiet life.
    possible_duplicates: int
    # Tasks in a reservation after their first: retried by backfill at least once.
    retried_by_backfill: int = 0
    counts: dict[str, int] = field(default_factory=dict)
    tasks: list[TaskView] = field(default_factory=list)

    @property
    def unfinished(self) -> int:
        return self.counts[TaskStatus.PENDING] + self.counts[TaskStatus.PROCESSING]


def lock_batch(conn: Connection, batch_id: str) -> Row[Any]:
    """The batch's row, locked until the transaction ends (money moves under this lock);
    UnknownBatch when there is none."""
    batch = conn.execute(
        sa.select(batch_jobs).where(batch_jobs.c.id == batch_id).with_for_update()
    ).one_or_none()
    if batch is None:
        raise UnknownBatch(batch_id)
    return batch


def get_batch(
    engine: Engine, batch_id: str, *, with_tasks: bool = True, task_limit: int | None = None
) -> BatchView:
    """The batch, its counts per task status (``queued`` counted as pending) and its tasks
    (the first ``task_limit`` of them, when given)."""
    with reading(engine) as conn:
        return read_batch(conn, batch_id, with_tasks=with_tasks, task_limit=task_limit)


def read_batch(
    conn: Connection, batch_id: str, *, with_tasks: bool = True, task_limit: int | None = None
) -> BatchView:
    view = read_batches(conn, [batch_id]).get(batch_id)
    if view is None:
        raise UnknownBatch(batch_id)
    if not with_tasks:
        return view
    task_query = (
        sa.select(
            video_tasks.c.id,
            video_tasks.c.batch_index,
            video_tasks.c.status,
            video_tasks.c.model,
            video_tasks.c.prompt,
            video_tasks.c.video_url,
            video_tasks.c.error_message,
            video_tasks.c.attempts,
            video_tasks.c.progress,
            video_tasks.c.price,
            video_tasks.c.grsai_task_id,
            video_tasks.c.possible_duplicates,
            video_tasks.c.archived_url,
            video_tasks.c.archived_at,
            video_tasks.c.video_bytes,
            video_tasks.c.video_sha256,
            video_tasks.c.archive_error,
            video_tasks.c.reservation,
        )
        .where(video_tasks.c.batch_job_id == batch_id)
        .order_by(video_tasks.c.batch_index)
        .limit(task_limit)
    )
    return replace(view, tasks=[TaskView(**row._mapping) for row in conn.execute(task_query)])


def read_batches(conn: Connection, batch_ids: Sequence[str]) -> dict[str, BatchView]:
    """Several batches at once, without their tasks: two queries, however many batches."""
    views: dict[str, BatchView] = {}
    for start in range(0, len(batch_ids), 500):
        chunk = list(batch_ids[start : start + 500])
        views |= _read_chunk(conn, chunk)
    return views


def _read_chunk(conn: Connection, batch_ids: list[str]) -> dict[str, BatchView]:
    t = video_tasks.c
    # A final task counts as 100 % done, whatever its last progress figure.
    done = sa.case((t.status.in_(sorted(FINAL_STATUSES)), 100), else_=t.progress)
    count_query = (
        sa.select(
            t.batch_job_id,
            t.status,
            sa.func.count(),
            sa.func.sum(done),
            sa.func.sum(t.possible_duplicates),
            sa.func.sum(sa.case((t.reservation > 1, 1), else_=0)),
        )
        .where(t.batch_job_id.in_(batch_ids))
        .group_by(t.batch_job_id, t.status)
    )
    counts: dict[str, dict[str, int]] = {b: dict.fromkeys(TASK_STATUSES, 0) for b in batch_ids}
    percent: dict[str, int] = dict.fromkeys(batch_ids, 0)
    duplicates: dict[str, int] = dict.fromkeys(batch_ids, 0)
    retried: dict[str, int] = dict.fromkeys(batch_ids, 0)
    for batch_id, status, count, status_percent, dups, status_retried in conn.execute(count_query):
        counts[batch_id][TaskStatus.PENDING.value if status == QUEUED else status] += count
        percent[batch_id] += int(status_percent or 0)
        duplicates[batch_id] += int(dups or 0)
        retried[batch_id] += int(status_retried or 0)
    views = {}
    for batch in conn.execute(sa.select(batch_jobs).where(batch_jobs.c.id.in_(batch_ids))):
        total = sum(counts[batch.id].values())
        views[batch.id] = BatchView(
            batch_id=batch.id,
            user_id=batch.user_id,
            status=batch.status,
            total_tasks=batch.total_tasks,
            reserved_credits=batch.reserved_credits,
            charged_credits=batch.charged_credits,
            refunded_credits=batch.refunded_credits,
            created_at=batch.created_at,
            settled_at=batch.settled_at,
            cancelled_at=batch.cancelled_at,
            error_message=batch.error_message,
            progress_percent=round(percent[batch.id] / total, 1) if total else 100.0,
            possible_duplicates=duplicates[batch.id],
            retried_by_backfill=retried[batch.id],
            counts=counts[batch.id],
        )
    return views


@dataclass(frozen=True)
class BatchHeader:
    id: str
    status: str
    created_at: datetime
    user_id: str


def count_unfinished(conn: Connection, batch_ids: Sequence[str]) -> int:
    """Tasks of the batches that are not final yet (pending, queued or processing)."""
    query = sa.select(sa.func.count()).where(
        video_tasks.c.batch_job_id.in_(batch_ids),
        video_tasks.c.status.in_(sorted(UNFINISHED_STATUSES)),
    )
    return int(conn.execute(query).scalar_one())


def batches_created_since(
    engine: Engine,
    since: datetime | None,
    limit: int,
    *,
    after: BatchHeader | None = None,
) -> list[BatchHeader]:
    """A page of the batches created at or after ``since`` (all when None), oldest first;
    ``after`` continues from the last batch of the previous page."""
    b = batch_jobs.c
    query = sa.select(b.id, b.status, b.created_at, b.user_id)
    if since is not None:
        query = query.where(b.created_at >= since)
    if after is not None:
        query = query.where(sa.tuple_(b.created_at, b.id) > sa.tuple_(after.created_at, after.id))
    query = query.order_by(b.created_at, b.id).limit(limit)
    with reading(engine) as conn:
        return [
            BatchHeader(row.id, row.status, row.created_at, row.user_id)
            for row in conn.execute(query)
        ]


def existing_batch_ids(engine: Engine, batch_ids: Sequence[str]) -> set[str]:
    """Which of ``batch_ids`` name a batch (chunked: any number of ids)."""
    found: set[str] = set()
    with reading(engine) as conn:
        for start in range(0, len(batch_ids), 500):
            chunk = list(batch_ids[start : start + 500])
            found |= set(conn.scalars(sa.select(batch_jobs.c.id).where(batch_jobs.c.id.in_(chunk))))
    return found


def settled_since(conn: Connection, since: datetime) -> list[str]:
    """Batches settled at or after ``since``, oldest settlement first."""
    query = (
        sa.select(batch_jobs.c.id)
        .where(batch_jobs.c.status == BatchStatus.SETTLED.value, batch_jobs.c.settled_at >= since)
        .order_by(batch_jobs.c.settled_at, batch_jobs.c.id)
    )
    return list(conn.scalars(query))


def open_batch_ids(conn: Connection) -> list[str]:
    """Batches with work left (unfinished tasks, or final tasks not settled), oldest first."""
    query = (
        sa.select(batch_jobs.c.id)
        .where(batch_jobs.c.status != BatchStatus.SETTLED.value)
        .order_by(batch_jobs.c.created_at, batch_jobs.c.id)
    )
    return list(conn.scalars(query))


def list_batches(
    engine: Engine,
    *,
    status: str | None = None,
    user_id: str | None = None,
    limit: int = 50,
    before: tuple[datetime, str] | None = None,
) -> list[BatchView]:
    """The newest ``limit`` batches (of a status, of a user), newest first, with their counts;
    with ``before`` (a batch's ``created_at`` and id), the ones after it in that order."""
    b = batch_jobs.c
    query = sa.select(b.id).order_by(b.created_at.desc(), b.id.desc()).limit(limit)
    if before is not None:
        at, batch_id = before
        query = query.where(sa.or_(b.created_at < at, sa.and_(b.created_at == at, b.id < batch_id)))
    if status is not None:
        query = query.where(b.status == status)
    if user_id is not None:
        query = query.where(b.user_id == user_id)
    with reading(engine) as conn:
        ids = list(conn.scalars(query))
        views = read_batches(conn, ids)
    return [views[batch_id] for batch_id in ids]
