"""The task state machine and the normalisation of Grsai results (SPEC 3).

One home for "what a remote answer means": polling and (later) webhook callbacks feed a
:class:`RemoteResult` through :func:`normalise`, and :func:`after_poll` or
:func:`after_submit_failure` decide what the task becomes.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Final, Literal


class TaskStatus(StrEnum):
    PENDING = "pending"
    PROCESSING = "processing"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


# Another writer may store "queued"; it means the same as pending (SPEC 1).
QUEUED: Final = "queued"
FINAL_STATUSES: Final = frozenset({TaskStatus.SUCCEEDED.value, TaskStatus.FAILED.value})
UNFINISHED_STATUSES: Final = frozenset(
    {TaskStatus.PENDING.value, TaskStatus.PROCESSING.value, QUEUED}
)


class BatchStatus(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    SETTLED = "settled"


class FailureKind(StrEnum):
    """Why a task failed; decides whether it may be tried again."""

    INVALID_INPUT = "invalid_input"
    INPUT_MODERATION = "input_moderation"
    OUTPUT_MODERATION = "output_moderation"
    GENERATION_ERROR = "error"
    SUBMIT_EXHAUSTED = "submit_exhausted"
    TIMED_OUT = "timed_out"
    API_ERROR = "api_error"
    NO_VIDEO_URL = "no_video_url"
    NOT_FOUND = "not_found"


# Resubmitted inside one reservation while attempts remain (SPEC 3).
AUTO_RETRYABLE: Final = frozenset(
    {FailureKind.GENERATION_ERROR, FailureKind.SUBMIT_EXHAUSTED, FailureKind.TIMED_OUT}
)
# Retried with a new reservation by a run or backfill of a settled batch (SPEC 1, 4).
BACKFILL_RETRYABLE: Final = AUTO_RETRYABLE

SUCCEEDED_WITHOUT_VIDEO_URL: Final = "SUCCEEDED_WITHOUT_VIDEO_URL"
NOT_FOUND_CODE: Final = -22


@dataclass(frozen=True)
class RemoteResult:
    """What the API said about a task, field by field, before any interpretation."""

    code: int
    msg: str
    status: str | None = None
    progress: int | None = None
    failure_reason: str | None = None
    error: str | None = None
    video_url: str | None = None


@dataclass(frozen=True)
class PollOutcome:
    """The normalised meaning of one :class:`RemoteResult`."""

    state: Literal["running", "succeeded", "failed", "not_found"]
    progress: int | None = None
    video_url: str | None = None
    error_message: str | None = None
    failure_kind: FailureKind | None = None


def normalise(result: RemoteResult) -> PollOutcome:
    """Map an answer to its outcome exactly as SPEC 3 lists (the seed's normalisation)."""
    if result.code == NOT_FOUND_CODE:
        return PollOutcome("not_found")
    if result.code != 0:
        return PollOutcome(
            "failed",
            error_message=result.msg or f"code {result.code}",
            failure_kind=FailureKind.API_ERROR,
        )
    if result.status == "succeeded":
        if result.video_url:
            return PollOutcome("succeeded", progress=100, video_url=result.video_url)
        return PollOutcome(
            "failed",
            error_message=SUCCEEDED_WITHOUT_VIDEO_URL,
            failure_kind=FailureKind.NO_VIDEO_URL,
        )
    if result.status == "failed":
        kind = _failure_kind_of(result.failure_reason)
        detail = ": ".join(p for p in (result.failure_reason, result.error) if p) or "failed"
        return PollOutcome("failed", error_message=detail, failure_kind=kind)
    # "running" and any status the API may add later: still working, bounded by the task timeout.
    return PollOutcome("running", progress=_clamp_progress(result.progress))


def _failure_kind_of(failure_reason: str | None) -> FailureKind:
    if failure_reason == "input_moderation":
        return FailureKind.INPUT_MODERATION
    if failure_reason == "output_moderation":
        return FailureKind.OUTPUT_MODERATION
    # "error" and anything unnamed: a generation error, which may be retried.
    return FailureKind.GENERATION_ERROR


def _clamp_progress(progress: int | None) -> int | None:
    if progress is None:
        return None
    return max(0, min(100, int(progress)))


@dataclass(frozen=True)
class RetryPolicy:
    """The limits of SPEC 3 that decide when a task stops being tried."""

    max_task_retries: int = 2
    not_found_grace_s: float = 120.0
    task_timeout_s: float = 3600.0

    def may_retry(self, attempts: int) -> bool:
        """``attempts`` submits have been made; another is allowed while it is at most the limit."""
        return attempts <= self.max_task_retries


@dataclass(frozen=True)
class TaskChange:
    """What to write to a task after an answer. ``status`` pending means: submit again."""

    status: TaskStatus
    progress: int | None = None
    video_url: str | None = None
    error_message: str | None = None
    failure_kind: FailureKind | None = None
    not_found_since: datetime | None = None


def after_poll(
    outcome: PollOutcome,
    *,
    attempts: int,
    submitted_at: datetime | None,
    not_found_since: datetime | None,
    now: datetime,
    policy: RetryPolicy,
) -> TaskChange | None:
    """The task's next state after a poll answer; ``None`` leaves it exactly as it is."""
    if outcome.state == "succeeded":
        return TaskChange(TaskStatus.SUCCEEDED, progress=100, video_url=outcome.video_url)
    if outcome.state == "failed":
        assert outcome.failure_kind is not None and outcome.error_message is not None
        return _failed_or_retried(outcome.failure_kind, outcome.error_message, attempts, policy)
    if outcome.state == "not_found":
        if not_found_since is None:
            return TaskChange(TaskStatus.PROCESSING, not_found_since=now)
        unknown_for = (now - not_found_since).total_seconds()
        if unknown_for > policy.not_found_grace_s:
            message = f"TASK_NOT_FOUND: the API has not known this task for {unknown_for:.0f} s"
            return TaskChange(
                TaskStatus.FAILED, error_message=message, failure_kind=FailureKind.NOT_FOUND
            )
        return None
    if submitted_at is not None and (now - submitted_at).total_seconds() > policy.task_timeout_s:
        message = f"TIMED_OUT: still running {policy.task_timeout_s:.0f} s after submission"
        return _failed_or_retried(FailureKind.TIMED_OUT, message, attempts, policy)
    return TaskChange(TaskStatus.PROCESSING, progress=outcome.progress)


def after_submit_failure(message: str, *, attempts: int, policy: RetryPolicy) -> TaskChange:
    """A submit that failed after its whole retry budget (network, 5xx, timeouts, not JSON)."""
    return _failed_or_retried(
        FailureKind.SUBMIT_EXHAUSTED, f"SUBMIT_FAILED: {message}", attempts, policy
    )


def _failed_or_retried(
    kind: FailureKind, message: str, attempts: int, policy: RetryPolicy
) -> TaskChange:
    if kind in AUTO_RETRYABLE and policy.may_retry(attempts):
        return TaskChange(TaskStatus.PENDING, error_message=message, failure_kind=kind)
    return TaskChange(TaskStatus.FAILED, error_message=message, failure_kind=kind)
