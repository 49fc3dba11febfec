"""Follow a task by webHook callback (SPEC 5): the same normalisation and writes as a poll.

A callback names one of our tasks (its token was checked before this) and, in ``data.id``,
the remote task it is about. It moves the task only while that remote task is the task's
current attempt and the task is still ``processing``, so a repeated or late callback, or one
about an earlier attempt, changes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from sqlalchemy.engine import Engine

from grsai_pipeline.domain.states import RetryPolicy, TaskStatus, after_poll, normalise
from grsai_pipeline.grsai.wire import PollResponse
from grsai_pipeline.store.columns import utc_now
from grsai_pipeline.store.polling import record_poll_changes, task_at_api


class CallbackVerdict(StrEnum):
    APPLIED = "applied"  # the task moved: progress, a final state, or back to pending to retry
    UNCHANGED = "unchanged"  # nothing new: a repeated callback, or the task is already final
    UNKNOWN_TASK = "unknown_task"
    OTHER_ATTEMPT = "other_attempt"  # data.id is not the task's current remote task


@dataclass(frozen=True)
class CallbackOutcome:
    verdict: CallbackVerdict
    status: str | None = None  # the task's status afterwards


def apply_callback(
    engine: Engine,
    policy: RetryPolicy,
    task_id: str,
    answer: PollResponse,
    now: datetime | None = None,
) -> CallbackOutcome:
    found = task_at_api(engine, task_id)
    if found is None:
        return CallbackOutcome(CallbackVerdict.UNKNOWN_TASK)
    status, target = found
    remote_id = answer.data.id if answer.data else None
    if target is None or target.grsai_task_id != remote_id:
        return CallbackOutcome(CallbackVerdict.OTHER_ATTEMPT, status)
    if status != TaskStatus.PROCESSING.value:
        return CallbackOutcome(CallbackVerdict.UNCHANGED, status)
    change = after_poll(
        normalise(answer.to_result(is_sora=target.is_sora)),
        attempts=target.attempts,
        submitted_at=target.submitted_at,
        not_found_since=target.not_found_since,
        now=now or utc_now(),
        policy=policy,
    )
    if change is not None and record_poll_changes(engine, [(target, change)]):
        return CallbackOutcome(CallbackVerdict.APPLIED, change.status.value)
    # No news, or another writer (a poll, a second callback) moved the task first.
    again = task_at_api(engine, task_id)
    return CallbackOutcome(CallbackVerdict.UNCHANGED, again[0] if again else None)
