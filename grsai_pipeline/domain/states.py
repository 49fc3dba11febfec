"""Statuses, failure kinds and the normalisation of Grsai answers (SPEC 3).

One home for "what a remote answer means": a poll's or a callback's :class:`RemoteResult` goes
through :func:`normalise`; :mod:`grsai_pipeline.domain.lifecycle` decides what the task becomes.
"""

from __future__ import annotations

from dataclasses import dataclass
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
    CANCELLED = "cancelled"
    # A batch written as rows that the balance could not cover: refused whole, never sent.
    INSUFFICIENT_CREDITS = "insufficient_credits"
    # A retryable failure retried by backfill as often as GRSAI_MAX_BACKFILL_RETRIES allows.
    RETRIES_EXHAUSTED = "retries_exhausted"
    # A final status SPEC 3 does not name (``violation``, say): never retried by itself.
    UNKNOWN_STATUS = "unknown_status"


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


# Statuses that say the work goes on: SPEC 3's "running", no status at all, and the words
# other APIs use for work not started yet (failing those would refund a video being made).
WORKING_STATUSES: Final = frozenset({"running", "", "queued", "pending", "processing"})


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
    if (result.status or "").strip().lower() in WORKING_STATUSES:
        return PollOutcome("running", progress=_clamp_progress(result.progress))
    # Any other status (integrators report "violation"): final, so nothing waits on it forever.
    detail = result.error or result.failure_reason or result.msg or "a status SPEC 3 does not name"
    return PollOutcome(
        "failed",
        error_message=f"{result.status}: {detail}",
        failure_kind=FailureKind.UNKNOWN_STATUS,
    )


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
    # Retries by backfill per task (issue 24): each is a new reservation of the task.
    max_backfill_retries: int = 3

    def may_retry(self, attempts: int) -> bool:
        """``attempts`` submits have been made; another is allowed while it is at most the limit."""
        return attempts <= self.max_task_retries

    def may_retry_by_backfill(self, reservation: int) -> bool:
        """A task in its ``reservation``-th reservation has been retried by backfill
        ``reservation - 1`` times; once more is allowed while that is under the limit."""
        return reservation <= self.max_backfill_retries
