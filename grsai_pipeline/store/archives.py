"""Archived copies of videos in the database: which succeeded tasks still need their video
copied, and the guarded writes that record a copy (or why it failed).

These columns are facts about a task's video, not its state: the lifecycle never reads them,
and a write here changes no status and no money. A copy is recorded only for a task that is
still succeeded with the very ``video_url`` that was copied, and not recorded yet.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from grsai_pipeline.domain.states import TaskStatus
from grsai_pipeline.errors import NoArchivedVideo
from grsai_pipeline.store.db import reading
from grsai_pipeline.store.schema import video_tasks

t = video_tasks.c
EXPIRED_PREFIX = "EXPIRED:"


@dataclass(frozen=True)
class VideoToArchive:
    task_id: str
    batch_job_id: str
    batch_index: int
    video_url: str


def videos_to_archive(
    engine: Engine, *, batch_ids: Sequence[str] | None = None, limit: int = 500
) -> list[VideoToArchive]:
    """Succeeded tasks with a video and no archived copy, but those whose URL expired."""
    query = (
        sa.select(t.id, t.batch_job_id, t.batch_index, t.video_url)
        .where(
            # Inline, so that SQLite may use the partial index ix_video_tasks_unarchived.
            t.status == sa.literal_column("'succeeded'"),
            t.video_url.is_not(None),
            t.video_url != "",
            t.archived_url.is_(None),
            sa.or_(t.archive_error.is_(None), ~t.archive_error.startswith(EXPIRED_PREFIX)),
        )
        .order_by(t.updated_at, t.id)
        .limit(limit)
    )
    if batch_ids is not None:
        query = query.where(t.batch_job_id.in_(batch_ids))
    with reading(engine) as conn:
        return [VideoToArchive(*row) for row in conn.execute(query)]


def record_archived(
    conn: Connection,
    video: VideoToArchive,
    *,
    url: str,
    size: int,
    sha256: str,
    now: datetime,
) -> bool:
    """Record the copy; False when the task moved on meanwhile (or another copy was recorded)."""
    result = conn.execute(
        video_tasks.update()
        .where(*_still(video))
        .values(
            archived_url=url,
            archived_at=now,
            video_bytes=size,
            video_sha256=sha256,
            archive_error=None,
            updated_at=now,
        )
    )
    return result.rowcount == 1


def record_archive_failure(
    conn: Connection, video: VideoToArchive, message: str, now: datetime
) -> None:
    """Say why the copy failed; ``EXPIRED: ...`` ends the attempts for this video."""
    conn.execute(
        video_tasks.update().where(*_still(video)).values(archive_error=message, updated_at=now)
    )


def _still(video: VideoToArchive) -> list[sa.ColumnElement[bool]]:
    return [
        t.id == video.task_id,
        t.status == TaskStatus.SUCCEEDED.value,
        t.video_url == video.video_url,
        t.archived_url.is_(None),
    ]


@dataclass(frozen=True)
class ArchivedCopy:
    """Where a task's archived video is, and what was stored."""

    task_id: str
    url: str
    size: int | None
    sha256: str | None


def archived_copy(engine: Engine, task_id: str) -> ArchivedCopy:
    """The task's archived video; NoArchivedVideo for an unknown task or one without a copy."""
    query = sa.select(t.status, t.archived_url, t.video_bytes, t.video_sha256).where(
        t.id == task_id
    )
    with reading(engine) as conn:
        row = conn.execute(query).first()
    if row is None:
        raise NoArchivedVideo(task_id, "no such task")
    if row.archived_url is None:
        why = (
            "its video is not copied to the archive yet"
            if row.status == TaskStatus.SUCCEEDED.value
            else f"the task is {row.status}, not succeeded"
        )
        raise NoArchivedVideo(task_id, why)
    return ArchivedCopy(task_id, row.archived_url, row.video_bytes, row.video_sha256)


@dataclass(frozen=True)
class ArchiveState:
    """A batch's succeeded videos: archived, waiting for a copy, and lost (URL expired)."""

    archived: int
    archived_bytes: int
    waiting: list[int]
    expired: dict[int, str]


def archive_state(engine: Engine, batch_ids: Sequence[str]) -> dict[str, ArchiveState]:
    """Per batch, in one query."""
    query = (
        sa.select(
            t.batch_job_id, t.batch_index, t.id, t.archived_url, t.video_bytes, t.archive_error
        )
        .where(t.batch_job_id.in_(batch_ids), t.status == TaskStatus.SUCCEEDED.value)
        .order_by(t.batch_job_id, t.batch_index)
    )
    found: dict[str, tuple[int, int, list[int], dict[int, str]]] = {
        b: (0, 0, [], {}) for b in batch_ids
    }
    with reading(engine) as conn:
        for batch_id, index, task_id, archived_url, size, error in conn.execute(query):
            archived, total, waiting, expired = found[batch_id]
            if archived_url is not None:
                found[batch_id] = (archived + 1, total + (size or 0), waiting, expired)
            elif error is not None and error.startswith(EXPIRED_PREFIX):
                expired[index] = f"task {task_id}: {error}"
            else:
                waiting.append(index)
    return {b: ArchiveState(*values) for b, values in found.items()}
