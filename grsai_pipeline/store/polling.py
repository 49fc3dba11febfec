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


def processing_tasks(engine: Engine, batch_ids: Sequence[str]) -> list[PollTarget]:
    t = video_tasks.c
    query = (
        sa.select(
            t.id,
            t.batch_job_id,
            t.grsai_task_id,
            t.model,
            t.attempts,
            t.progress,
            t.submitted_at,
            t.not_found_since,
        )
        .where(
            t.batch_job_id.in_(batch_ids),
            t.status == TaskStatus.PROCESSING.value,
            t.grsai_task_id.is_not(None),
        )
        .order_by(t.batch_job_id, t.batch_index)
    )
    with reading(engine) as conn:
        return [
            PollTarget(
                id=row.id,
                batch_job_id=row.batch_job_id,
                grsai_task_id=row.grsai_task_id,
                is_sora=row.model in SORA_MODELS,
                attempts=row.attempts,
                progress=row.progress,
                submitted_at=row.submitted_at,
                not_found_since=row.not_found_since,
            )
            for row in conn.execute(query)
        ]


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
