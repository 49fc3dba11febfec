"""Tasks at the API (``processing``) and the writes that follow a poll answer."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from grsai_pipeline.domain.states import TaskChange, TaskStatus
from grsai_pipeline.domain.tasks import SORA_MODELS
from grsai_pipeline.store.columns import utc_now
from grsai_pipeline.store.db import reading
from grsai_pipeline.store.schema import video_tasks


@dataclass(frozen=True)
class PollTarget:
    """A task to ask the API about, with what the state machine needs to judge the answer."""

    id: str
    batch_job_id: str
    grsai_task_id: str
    is_sora: bool
    attempts: int
    progress: int
    submitted_at: datetime | None
    not_found_since: datetime | None


_TARGET_COLUMNS = (
    video_tasks.c.id,
    video_tasks.c.batch_job_id,
    video_tasks.c.grsai_task_id,
    video_tasks.c.model,
    video_tasks.c.attempts,
    video_tasks.c.progress,
    video_tasks.c.submitted_at,
    video_tasks.c.not_found_since,
)


def _target(row: sa.Row[*tuple[Any, ...]]) -> PollTarget:
    return PollTarget(
        id=row.id,
        batch_job_id=row.batch_job_id,
        grsai_task_id=row.grsai_task_id,
        is_sora=row.model in SORA_MODELS,
        attempts=row.attempts,
        progress=row.progress,
        submitted_at=row.submitted_at,
        not_found_since=row.not_found_since,
    )


def processing_tasks(engine: Engine, batch_ids: Sequence[str]) -> list[PollTarget]:
    t = video_tasks.c
    query = (
        sa.select(*_TARGET_COLUMNS)
        .where(
            t.batch_job_id.in_(batch_ids),
            t.status == TaskStatus.PROCESSING.value,
            t.grsai_task_id.is_not(None),
        )
        .order_by(t.batch_job_id, t.batch_index)
    )
    with reading(engine) as conn:
        return [_target(row) for row in conn.execute(query)]


def task_at_api(engine: Engine, task_id: str) -> tuple[str, PollTarget | None] | None:
    """A task's status, and its current remote task as a poll would see it (None when it has
    none); None when there is no such task. For callbacks, which name one task."""
    query = sa.select(video_tasks.c.status, *_TARGET_COLUMNS).where(video_tasks.c.id == task_id)
    with reading(engine) as conn:
        row = conn.execute(query).one_or_none()
    if row is None:
        return None
    return row.status, (_target(row) if row.grsai_task_id is not None else None)


def is_noop(target: PollTarget, change: TaskChange) -> bool:
    """A running task whose progress and not-found clock did not move needs no write."""
    return (
        change.status is TaskStatus.PROCESSING
        and (change.progress is None or change.progress == target.progress)
        and change.not_found_since == target.not_found_since
    )


def record_poll_changes(engine: Engine, changes: Sequence[tuple[PollTarget, TaskChange]]) -> int:
    """Apply poll results in one transaction; returns how many tasks changed.

    Each write is guarded by ``status = 'processing'`` and the remote id that was polled, so a
    late answer never moves a final task back nor touches a newer attempt.
    """
    updates = [(t, c) for t, c in changes if not is_noop(t, c)]
    if not updates:
        return 0
    now = utc_now()
    t = video_tasks.c
    written = 0
    with engine.begin() as conn:
        for target, change in updates:
            guard = sa.and_(
                t.id == target.id,
                t.grsai_task_id == target.grsai_task_id,
                t.status == TaskStatus.PROCESSING.value,
            )
            values = _values_after(target, change) | {"updated_at": now}
            written += conn.execute(video_tasks.update().where(guard).values(values)).rowcount
    return written


def _values_after(target: PollTarget, change: TaskChange) -> dict[str, Any]:
    values: dict[str, Any] = {"status": change.status.value}
    if change.status is TaskStatus.PROCESSING:
        values["progress"] = target.progress if change.progress is None else change.progress
        values["not_found_since"] = change.not_found_since
    elif change.status is TaskStatus.SUCCEEDED:
        values.update(
            progress=100,
            video_url=change.video_url,
            error_message=None,
            failure_kind=None,
            not_found_since=None,
        )
    else:
        # failed, or pending again for a new attempt: the remote task is over either way.
        assert change.failure_kind is not None
        values.update(
            error_message=change.error_message,
            failure_kind=change.failure_kind.value,
            not_found_since=None,
        )
        if change.status is TaskStatus.PENDING:
            values.update(grsai_task_id=None, submitted_at=None, progress=0)
    return values
