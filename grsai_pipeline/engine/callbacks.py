"""Follow a task by webHook callback (SPEC 5): the same decision and guarded write as a poll.

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

from grsai_pipeline.domain.lifecycle import Answered, decide
from grsai_pipeline.domain.states import RetryPolicy, TaskStatus
from grsai_pipeline.grsai.wire import PollResponse
from grsai_pipeline.store.columns import utc_now
from grsai_pipeline.store.tasks import apply_transitions, task_for_callback


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
    """Apply one verified callback in one transaction."""
    now = now or utc_now()
    remote_id = answer.data.id if answer.data else None
    with engine.begin() as conn:
        task = task_for_callback(conn, task_id)
        if task is None:
            return CallbackOutcome(CallbackVerdict.UNKNOWN_TASK)
        state = task.state
        if state.grsai_task_id is None or state.grsai_task_id != remote_id:
            return CallbackOutcome(CallbackVerdict.OTHER_ATTEMPT, state.status)
        if state.status != TaskStatus.PROCESSING.value:
            return CallbackOutcome(CallbackVerdict.UNCHANGED, state.status)
        result = answer.to_result(is_sora=task.is_sora)
        transition = decide(state, Answered(result), now=now, policy=policy)
        if transition is None or not apply_transitions(conn, [transition], runner_id=None, now=now):
            return CallbackOutcome(CallbackVerdict.UNCHANGED, state.status)
        return CallbackOutcome(CallbackVerdict.APPLIED, state.after(transition).status)
