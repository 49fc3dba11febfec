"""A task's life as one decision: :func:`decide` takes the task as it is and one event, and
says what the task becomes. Every writer of task rows (the engine, the callback receiver, a
backfill) applies what this returns, and nothing else moves a task.

Events: a submit's outcome (:class:`Accepted`, :class:`Rejected`, :class:`SubmitFailed`,
:class:`NotSent`), an answer about the remote task from a poll or a callback
(:class:`Answered`), a stored row that breaks a rule of SPEC 2 (:class:`FoundInvalid`), a retry
by backfill with a new reservation (:class:`RetriedByBackfill`), one the balance cannot cover
(:class:`RetryRefused`) or one past the limit (:class:`RetriesExhausted`), a cancel
(:class:`Cancelled`), and the intake of a task a web app wrote as a row (:class:`TakenIn`:
priced, or refused before anything is sent).

A :class:`Transition` names the fields that change (SPEC 1's column names) and what the row
must still be for the change to apply; the store turns that guard into its WHERE clause, so a
late answer, a second runner or a repeated callback can never move a task twice.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Final

from grsai_pipeline.domain.states import (
    AUTO_RETRYABLE,
    FINAL_STATUSES,
    QUEUED,
    FailureKind,
    RemoteResult,
    RetryPolicy,
    TaskStatus,
    normalise,
)

WAITING: Final = frozenset({TaskStatus.PENDING.value, QUEUED})
AT_API: Final = frozenset({TaskStatus.PROCESSING.value})
FAILED: Final = frozenset({TaskStatus.FAILED.value})
CANCELLED_PREFIX: Final = "CANCELLED:"
INSUFFICIENT_CREDITS_PREFIX: Final = "INSUFFICIENT_CREDITS:"


@dataclass(frozen=True)
class TaskState:
    """What the lifecycle needs to know of a task to judge an event about it."""

    id: str
    status: str
    attempts: int = 0
    grsai_task_id: str | None = None
    submitted_at: datetime | None = None
    not_found_since: datetime | None = None
    progress: int = 0
    error_message: str | None = None

    def after(self, transition: Transition) -> TaskState:
        """This task once ``transition`` is written."""
        fields = {k: v for k, v in transition.change.items() if k in _STATE_FIELDS}
        return replace(self, **fields)  # type: ignore[arg-type]


_STATE_FIELDS: Final = frozenset(
    {
        "status",
        "attempts",
        "grsai_task_id",
        "submitted_at",
        "not_found_since",
        "progress",
        "error_message",
    }
)


# --- events ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Accepted:
    """The API accepted a submit. ``uncertain_tries``: earlier tries whose answer was lost."""

    remote_id: str
    uncertain_tries: int = 0


@dataclass(frozen=True)
class Rejected:
    """The API answered a submit with ``code != 0``: final (SPEC 3)."""

    message: str
    uncertain_tries: int = 0


@dataclass(frozen=True)
class SubmitFailed:
    """A submit failed for its whole retry budget (network, 5xx, timeouts, not JSON)."""

    message: str
    uncertain_tries: int = 0


@dataclass(frozen=True)
class NotSent:
    """A claimed task was not sent (429 past the deadline, a stopped run): it waits again."""


@dataclass(frozen=True)
class Answered:
    """What the API said about the task's remote task, from a poll or a callback."""

    result: RemoteResult
    # A poll's: when the task was last known to be running (the answer before, or its submit).
    # Its end came after: how long its model takes, which the poll's lag does not stretch.
    # None for a callback, sent at the end.
    running_at: datetime | None = None


@dataclass(frozen=True)
class FoundInvalid:
    """A stored task breaks a rule of SPEC 2 (another writer inserted it)."""

    message: str


@dataclass(frozen=True)
class RetriedByBackfill:
    """A run or backfill of a settled batch starts a new reservation for this failed task:
    its ``reservation``-th."""

    reservation: int


@dataclass(frozen=True)
class RetriesExhausted:
    """A retryable failure whose task was retried by backfill ``retries`` times, the limit
    (``RetryPolicy.max_backfill_retries``): it stays failed for good, and says so."""

    retries: int


@dataclass(frozen=True)
class RetryRefused:
    """A retry by backfill that the user's balance cannot cover: the task stays failed."""

    needed: int
    balance: int


@dataclass(frozen=True)
class TakenIn:
    """The pipeline took in a task written as a row (SPEC 1): ``price`` from the price table,
    and ``refusal`` (why, and the message) when it may not be sent: invalid, or its batch is
    more than the balance covers."""

    price: int
    refusal: tuple[FailureKind, str] | None = None


@dataclass(frozen=True)
class Cancelled:
    """The batch was cancelled before this task was sent."""

    reason: str


Event = (
    Accepted
    | Rejected
    | SubmitFailed
    | NotSent
    | Answered
    | FoundInvalid
    | RetriedByBackfill
    | RetriesExhausted
    | RetryRefused
    | Cancelled
    | TakenIn
)
SUBMIT_OUTCOMES: Final = (Accepted, Rejected, SubmitFailed, NotSent, FoundInvalid)


@dataclass(frozen=True)
class Transition:
    """What a task becomes: ``change`` maps fields to new values; the row must still have a
    status in ``when_status`` (and, for an answer, the remote task ``when_remote_id``; for a
    submit outcome, the claim of the runner writing it, which the write ends)."""

    task_id: str
    change: Mapping[str, object]
    when_status: frozenset[str]
    when_remote_id: str | None = None
    ends_claim: bool = False
    possible_duplicates: int = 0
    event: Event | None = field(default=None, compare=False)

    @property
    def status(self) -> str | None:
        """The status the task moves to, or None when only other fields change."""
        status = self.change.get("status")
        return str(status) if status is not None else None


def decide(
    task: TaskState, event: Event, *, now: datetime, policy: RetryPolicy
) -> Transition | None:
    """The task's next state after ``event``; None when the event changes nothing."""
    if isinstance(event, SUBMIT_OUTCOMES):
        return _after_submit(task, event, now, policy)
    if isinstance(event, Answered):
        return _after_answer(task, event, now, policy)
    if isinstance(event, RetriedByBackfill):
        change = _RETRY_FIELDS | {"reservation": event.reservation}
        return Transition(task.id, change, FAILED, event=event)
    if isinstance(event, RetriesExhausted):
        final = f"(final: retried by backfill {event.retries} time(s), the limit)"
        if (task.error_message or "").endswith(final):
            return None
        message = f"{task.error_message} {final}" if task.error_message else final
        change = {"error_message": message, "failure_kind": FailureKind.RETRIES_EXHAUSTED.value}
        return Transition(task.id, change, FAILED, event=event)
    if isinstance(event, RetryRefused):
        message = (
            f"{INSUFFICIENT_CREDITS_PREFIX} a retry needs {event.needed} credits but the balance"
            f" is {event.balance}"
        )
        if message == task.error_message:
            return None
        return Transition(task.id, {"error_message": message}, FAILED, event=event)
    if isinstance(event, Cancelled):
        change = _failed(FailureKind.CANCELLED, f"{CANCELLED_PREFIX} {event.reason}")
        change |= _NO_REMOTE_TASK
        return Transition(task.id, change, WAITING, event=event)
    if isinstance(event, TakenIn):
        taken: dict[str, object] = {"price": event.price, "priced_at": now}
        if event.refusal is None:
            taken["status"] = TaskStatus.PENDING.value  # a row written as queued is pending
        else:
            taken |= _failed(*event.refusal)
        return Transition(task.id, taken, WAITING, event=event)
    raise TypeError(f"unknown event {event!r}")


# A new reservation starts afresh: the last reservation's error is in its refund's history.
_RETRY_FIELDS: Final = {
    "status": TaskStatus.PENDING.value,
    "attempts": 0,
    "progress": 0,
    "grsai_task_id": None,
    "submitted_at": None,
    "not_found_since": None,
    "video_url": None,
    "error_message": None,
    "failure_kind": None,
    "finished_at": None,
}


def _after_submit(
    task: TaskState,
    event: Accepted | Rejected | SubmitFailed | NotSent | FoundInvalid,
    now: datetime,
    policy: RetryPolicy,
) -> Transition:
    attempts = task.attempts + 1
    change: dict[str, object]
    if isinstance(event, NotSent):
        change = {}
    elif isinstance(event, FoundInvalid):
        change = _failed(FailureKind.INVALID_INPUT, event.message) | _NO_REMOTE_TASK
    elif isinstance(event, Accepted):
        change = {
            "status": TaskStatus.PROCESSING.value,
            "grsai_task_id": event.remote_id,
            "submitted_at": now,
            "attempts": attempts,
            "progress": 0,
            "error_message": None,
            "failure_kind": None,
            "not_found_since": None,
        }
    elif isinstance(event, Rejected):
        change = _failed(FailureKind.API_ERROR, event.message) | _NO_REMOTE_TASK
        change["attempts"] = attempts
    else:
        message = f"SUBMIT_FAILED: {event.message}"
        change = _failed_or_again(FailureKind.SUBMIT_EXHAUSTED, message, attempts, policy)
        change |= _NO_REMOTE_TASK | {"attempts": attempts}
    uncertain = 0 if isinstance(event, NotSent | FoundInvalid) else event.uncertain_tries
    return Transition(
        task.id, change, WAITING, ends_claim=True, possible_duplicates=uncertain, event=event
    )


def _after_answer(
    task: TaskState, event: Answered, now: datetime, policy: RetryPolicy
) -> Transition | None:
    if task.status != TaskStatus.PROCESSING.value or task.grsai_task_id is None:
        return None  # final already, or not at the API: a late or stray answer changes nothing
    outcome = normalise(event.result)
    change: dict[str, object] | None
    if outcome.state == "succeeded":
        change = {
            "status": TaskStatus.SUCCEEDED.value,
            "progress": 100,
            "video_url": outcome.video_url,
            "error_message": None,
            "failure_kind": None,
            "not_found_since": None,
        }
    elif outcome.state == "failed":
        assert outcome.failure_kind is not None and outcome.error_message is not None
        change = _failed_or_again(
            outcome.failure_kind, outcome.error_message, task.attempts, policy
        )
    elif outcome.state == "not_found":
        change = _not_found(task, now, policy)
    else:
        change = _running(task, outcome.progress, now, policy)
    if change is None:
        return None
    if change.get("status") in FINAL_STATUSES:
        # With submitted_at: how long its model takes (domain/pacing.py), at the least.
        change["finished_at"] = event.running_at or now
    return Transition(task.id, change, AT_API, when_remote_id=task.grsai_task_id, event=event)


def _not_found(task: TaskState, now: datetime, policy: RetryPolicy) -> dict[str, object] | None:
    # The API answers -22 for a moment right after a submit: wait out the grace period.
    if task.not_found_since is None:
        return {"not_found_since": now}
    unknown_for = (now - task.not_found_since).total_seconds()
    if unknown_for <= policy.not_found_grace_s:
        return None
    message = f"TASK_NOT_FOUND: the API has not known this task for {unknown_for:.0f} s"
    return _failed(FailureKind.NOT_FOUND, message)


def _running(
    task: TaskState, progress: int | None, now: datetime, policy: RetryPolicy
) -> dict[str, object] | None:
    submitted = task.submitted_at
    if submitted is not None and (now - submitted).total_seconds() > policy.task_timeout_s:
        message = f"TIMED_OUT: still running {policy.task_timeout_s:.0f} s after submission"
        return _failed_or_again(FailureKind.TIMED_OUT, message, task.attempts, policy)
    change: dict[str, object] = {}
    if progress is not None and progress != task.progress:
        change["progress"] = progress
    if task.not_found_since is not None:
        change["not_found_since"] = None
    return change or None


# A task that goes back to waiting, or failed before the API knew it, has no remote task.
_NO_REMOTE_TASK: Final = {"grsai_task_id": None, "submitted_at": None, "progress": 0}


def _failed(kind: FailureKind, message: str) -> dict[str, object]:
    # A remote task that failed keeps its id, so a person can look it up upstream.
    return {
        "status": TaskStatus.FAILED.value,
        "error_message": message,
        "failure_kind": kind.value,
        "not_found_since": None,
    }


def _failed_or_again(
    kind: FailureKind, message: str, attempts: int, policy: RetryPolicy
) -> dict[str, object]:
    """Failed, or back to pending for a new attempt while ``attempts`` allow (SPEC 3)."""
    change = _failed(kind, message)
    if kind in AUTO_RETRYABLE and policy.may_retry(attempts):
        change |= {"status": TaskStatus.PENDING.value, **_NO_REMOTE_TASK}
    return change
