"""What a batch's tasks came to, as an operator reads it at a glance: its failures grouped by
reason, with how many a backfill would retry, and its first videos."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from grsai_pipeline.domain.states import BACKFILL_RETRYABLE, FailureKind, RetryPolicy, TaskStatus
from grsai_pipeline.store.schema import batch_jobs, video_tasks

# Longer "reasons" are an API's free text, not a category: they are grouped by failure kind.
MAX_REASON_CHARS = 40
CHUNK = 500


@dataclass(frozen=True)
class FailureGroup:
    reason: str
    tasks: int
    # How many of them a run or backfill of the settled batch would reserve and submit again.
    retryable: int
    # Retryable by kind, but retried by backfill as often as GRSAI_MAX_BACKFILL_RETRIES allows.
    used_up: int = 0


@dataclass(frozen=True)
class VideoLink:
    task_id: str
    batch_index: int
    url: str
    archived: bool


@dataclass(frozen=True)
class BatchOutcomes:
    failures: list[FailureGroup] = field(default_factory=list)
    videos: list[VideoLink] = field(default_factory=list)

    @property
    def failed(self) -> int:
        return sum(group.tasks for group in self.failures)

    @property
    def retryable(self) -> int:
        return sum(group.retryable for group in self.failures)

    @property
    def used_up(self) -> int:
        return sum(group.used_up for group in self.failures)


def failure_reason(error_message: str | None, failure_kind: str | None) -> str:
    """A failure's category: its message up to the first ':' (``INVALID_INPUT``,
    ``input_moderation``, ``CANCELLED``...), else its failure kind."""
    prefix = (error_message or "").split(":", 1)[0].strip()
    if prefix and len(prefix) <= MAX_REASON_CHARS:
        return prefix
    return failure_kind or "unknown"


def batch_outcomes(
    conn: Connection, batch_ids: Sequence[str], *, policy: RetryPolicy, videos: int = 5
) -> dict[str, BatchOutcomes]:
    """Each batch's failures by reason (largest first), with what a backfill would retry under
    ``policy``, and its first ``videos`` videos (the archived copy when there is one), a few
    queries however many batches."""
    found: dict[str, BatchOutcomes] = {}
    for start in range(0, len(batch_ids), CHUNK):
        found |= _read_chunk(conn, list(batch_ids[start : start + CHUNK]), policy, videos)
    return found


def _read_chunk(
    conn: Connection, batch_ids: list[str], policy: RetryPolicy, videos: int
) -> dict[str, BatchOutcomes]:
    t = video_tasks.c
    cancelled = set(
        conn.scalars(
            sa.select(batch_jobs.c.id).where(
                batch_jobs.c.id.in_(batch_ids), batch_jobs.c.cancelled_at.is_not(None)
            )
        )
    )
    retryable_kinds = {kind.value for kind in BACKFILL_RETRYABLE}
    groups: dict[str, dict[str, list[int]]] = {b: {} for b in batch_ids}
    in_bound = (t.reservation <= policy.max_backfill_retries).label("in_bound")
    failed = (
        sa.select(t.batch_job_id, t.failure_kind, t.error_message, in_bound, sa.func.count())
        .where(t.batch_job_id.in_(batch_ids), t.status == TaskStatus.FAILED.value)
        .group_by(t.batch_job_id, t.failure_kind, t.error_message, in_bound)
    )
    for batch_id, kind, message, bound, count in conn.execute(failed):
        tally = groups[batch_id].setdefault(failure_reason(message, kind), [0, 0, 0])
        tally[0] += count
        # A backfill retries these kinds, up to the limit, and nothing of a cancelled batch.
        if kind in retryable_kinds and batch_id not in cancelled:
            tally[1 if bound else 2] += count
        elif kind == FailureKind.RETRIES_EXHAUSTED:
            tally[2] += count
    links: dict[str, list[VideoLink]] = {b: [] for b in batch_ids}
    if videos > 0:
        order = sa.func.row_number().over(partition_by=t.batch_job_id, order_by=t.batch_index)
        ranked = (
            sa.select(
                t.batch_job_id,
                t.id,
                t.batch_index,
                t.video_url,
                t.archived_url,
                order.label("n"),
            )
            .where(t.batch_job_id.in_(batch_ids), t.status == TaskStatus.SUCCEEDED.value)
            .subquery()
        )
        query = sa.select(ranked).where(ranked.c.n <= videos).order_by(ranked.c.batch_index)
        for row in conn.execute(query):
            url = row.archived_url or row.video_url
            if url:
                links[row.batch_job_id].append(
                    VideoLink(row.id, row.batch_index, url, archived=row.archived_url is not None)
                )
    return {
        batch_id: BatchOutcomes(
            failures=sorted(
                (FailureGroup(reason, *tally) for reason, tally in groups[batch_id].items()),
                key=lambda g: (-g.tasks, g.reason),
            ),
            videos=links[batch_id],
        )
        for batch_id in batch_ids
    }
