"""Claims: which runner submits which pending task, and what its submit came to.

A claim marks a task as "being submitted by runner R since T". Only tasks with no claim, or a
claim older than the lease, can be claimed; PostgreSQL skips rows another runner has locked
(``FOR UPDATE SKIP LOCKED``) and SQLite serialises claimers with ``BEGIN IMMEDIATE``. A claim
ends when its runner records the submit's outcome or releases the task.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from grsai_pipeline.domain.states import (
    QUEUED,
    BatchStatus,
    FailureKind,
    RetryPolicy,
    TaskStatus,
    after_submit_failure,
)
from grsai_pipeline.domain.tasks import InvalidTask, TaskSpec, validate_task
from grsai_pipeline.store.columns import utc_now
from grsai_pipeline.store.schema import batch_jobs, video_tasks

WAITING = [TaskStatus.PENDING.value, QUEUED]
_SPEC_COLUMNS = ("prompt", "model", "reference_url", "aspect_ratio", "duration", "meta")


@dataclass(frozen=True)
class ClaimedTask:
    """A task this runner may submit now. ``spec`` is None when the row is invalid."""

    id: str
    batch_job_id: str
    batch_index: int
    attempts: int
    spec: TaskSpec | None
    invalid_reason: str | None
    # Taken over from a claim whose lease ran out: counted as a possible duplicate.
    reclaimed: bool = False


def task_spec_of(row: Any) -> TaskSpec:
    """Validate a stored task again (other writers may insert rows); raises InvalidTask."""
    return validate_task(
        {name: getattr(row, name) for name in _SPEC_COLUMNS}, allow_unknown_fields=True
    )


def claim_pending_tasks(
    engine: Engine,
    batch_ids: Sequence[str],
    runner_id: str,
    limit: int,
    *,
    lease_s: float,
) -> list[ClaimedTask]:
    """Claim up to ``limit`` waiting tasks of the batches, lowest ``batch_index`` first."""
    if limit <= 0 or not batch_ids:
        return []
    now = utc_now()
    stale_before = now - timedelta(seconds=lease_s)
    t = video_tasks.c
    candidates = (
        sa.select(
            t.id,
            t.batch_job_id,
            t.batch_index,
            t.attempts,
            t.claimed_by,
            *map(t.get, _SPEC_COLUMNS),
        )
        .where(
            t.batch_job_id.in_(batch_ids),
            t.status.in_(WAITING),
            sa.or_(t.claimed_by.is_(None), t.claimed_at < stale_before),
        )
        .order_by(t.batch_job_id, t.batch_index)
        .limit(limit)
        # NO KEY UPDATE: the ledger's foreign-key checks on these rows need not wait for us.
        .with_for_update(skip_locked=True, key_share=True)
    )
    with engine.begin() as conn:
        rows = conn.execute(candidates).all()
        if not rows:
            return []
        ids = [row.id for row in rows]
        # A claim that outlived its lease belonged to a runner that died or stalled: it may
        # have sent the submit without recording the answer, so this one may be a duplicate.
        conn.execute(
            video_tasks.update()
            .where(t.id.in_(ids))
            .values(
                claimed_by=runner_id,
                claimed_at=now,
                updated_at=now,
                possible_duplicates=t.possible_duplicates
                + sa.case((t.claimed_by.is_not(None), 1), else_=0),
            )
        )
        conn.execute(
            batch_jobs.update()
            .where(
                batch_jobs.c.id.in_({row.batch_job_id for row in rows}),
                batch_jobs.c.status == BatchStatus.PENDING.value,
            )
            .values(status=BatchStatus.RUNNING.value, updated_at=now)
        )
    claimed = []
    for row in rows:
        try:
            spec, reason = task_spec_of(row), None
        except InvalidTask as exc:
            spec, reason = None, str(exc)
        claimed.append(
            ClaimedTask(
                row.id,
                row.batch_job_id,
                row.batch_index,
                row.attempts,
                spec,
                reason,
                reclaimed=row.claimed_by is not None,
            )
        )
    return claimed


@dataclass(frozen=True)
class SubmitOutcome:
    """What became of one claimed task's submit. Exactly one of the optional fields is set,
    or none, which means the task was not sent and goes back to the queue untouched."""

    task: ClaimedTask
    grsai_task_id: str | None = None
    rejected: str | None = None
    exhausted: str | None = None
    invalid: str | None = None
    # Tries of this submit whose answer was lost: each may have made a remote task.
    uncertain_tries: int = 0


def record_submit_outcomes(
    engine: Engine, runner_id: str, outcomes: Sequence[SubmitOutcome], policy: RetryPolicy
) -> Counter[str]:
    """Write the outcomes of this runner's claims in one transaction, ending each claim.

    Returns how many tasks became ``processing``, ``failed``, ``pending`` (to try again) or
    were ``released`` untouched. A row whose claim this runner no longer holds (its lease
    passed and another runner took it) is left alone: the other runner owns it now.
    """
    tally: Counter[str] = Counter()
    if not outcomes:
        return tally
    now = utc_now()
    t = video_tasks.c
    mine = sa.and_(t.claimed_by == runner_id, t.status.in_(WAITING))
    with engine.begin() as conn:
        # One statement per task: each tells whether this runner still held the claim.
        for outcome in outcomes:
            values = _values_after(outcome, policy, now)
            if values is None:
                values, result = {}, "released"
            else:
                result = values["status"]
            values |= {"claimed_by": None, "claimed_at": None, "updated_at": now}
            if outcome.uncertain_tries:
                values["possible_duplicates"] = t.possible_duplicates + outcome.uncertain_tries
            written = conn.execute(
                video_tasks.update().where(t.id == outcome.task.id, mine).values(values)
            ).rowcount
            tally[result if written else "claim_lost"] += 1
    return tally


def _values_after(
    outcome: SubmitOutcome, policy: RetryPolicy, now: datetime
) -> dict[str, Any] | None:
    attempts = outcome.task.attempts + 1
    if outcome.grsai_task_id is not None:
        return {
            "status": TaskStatus.PROCESSING.value,
            "grsai_task_id": outcome.grsai_task_id,
            "submitted_at": now,
            "attempts": attempts,
            "progress": 0,
            "error_message": None,
            "failure_kind": None,
            "not_found_since": None,
        }
    if outcome.invalid is not None:
        return _failed(outcome.task.attempts, outcome.invalid, FailureKind.INVALID_INPUT)
    if outcome.rejected is not None:
        return _failed(attempts, outcome.rejected, FailureKind.API_ERROR)
    if outcome.exhausted is not None:
        change = after_submit_failure(outcome.exhausted, attempts=attempts, policy=policy)
        assert change.failure_kind is not None and change.error_message is not None
        values = _failed(attempts, change.error_message, change.failure_kind)
        values["status"] = change.status.value
        return values
    return None


def _failed(attempts: int, message: str, kind: FailureKind) -> dict[str, Any]:
    return {
        "status": TaskStatus.FAILED.value,
        "grsai_task_id": None,
        "submitted_at": None,
        "attempts": attempts,
        "progress": 0,
        "error_message": message,
        "failure_kind": kind.value,
        "not_found_since": None,
    }
