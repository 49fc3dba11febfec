"""SPEC 1-3: what a task becomes after each event, as :func:`decide` says, and the guard each
change carries so that it only applies to the task as it was judged."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from grsai_pipeline.domain.lifecycle import (
    Accepted,
    Answered,
    Cancelled,
    FoundInvalid,
    NotSent,
    Rejected,
    RetriedByBackfill,
    RetriesExhausted,
    RetryRefused,
    SubmitFailed,
    TaskState,
    Transition,
    decide,
)
from grsai_pipeline.domain.states import FailureKind, RemoteResult, RetryPolicy

NOW = datetime(2025, 1, 1, 12, 0, 0, tzinfo=UTC)
VIDEO = "https://videos.example.com/v.mp4"
POLICY = RetryPolicy(max_task_retries=2, not_found_grace_s=120.0, task_timeout_s=600.0)
WAITING = frozenset({"pending", "queued"})


def at_api(attempts: int = 1, **fields: object) -> TaskState:
    """A task the API accepted 30 s ago as ``remote-1``."""
    values: dict[str, object] = {
        "status": "processing",
        "attempts": attempts,
        "grsai_task_id": "remote-1",
        "submitted_at": NOW - timedelta(seconds=30),
    }
    values.update(fields)
    return TaskState("task-1", **values)  # type: ignore[arg-type]


def waiting(attempts: int = 0) -> TaskState:
    return TaskState("task-1", "pending", attempts=attempts)


def answered(
    task: TaskState, result: RemoteResult, policy: RetryPolicy = POLICY
) -> Transition | None:
    return decide(task, Answered(result), now=NOW, policy=policy)


def running(progress: int) -> RemoteResult:
    return RemoteResult(code=0, msg="success", status="running", progress=progress)


def generation_error() -> RemoteResult:
    return RemoteResult(code=0, msg="", status="failed", failure_reason="error", error="boom")


NOT_FOUND = RemoteResult(code=-22, msg="task not found")


def submit(task: TaskState, event: object, policy: RetryPolicy = POLICY) -> Transition:
    transition = decide(task, event, now=NOW, policy=policy)  # type: ignore[arg-type]
    assert transition is not None
    return transition


# --- answers from a poll or a callback -----------------------------------------------------


def test_an_answer_is_guarded_by_the_status_and_remote_task_it_was_judged_on() -> None:
    transition = answered(at_api(), running(42))

    assert transition is not None
    assert transition.task_id == "task-1"
    assert transition.when_status == frozenset({"processing"})
    assert transition.when_remote_id == "remote-1"
    assert not transition.ends_claim


def test_running_keeps_processing_and_stores_progress() -> None:
    transition = answered(at_api(), running(42))

    assert transition is not None
    assert transition.change == {"progress": 42}
    assert transition.status is None


def test_running_with_unchanged_progress_changes_nothing() -> None:
    assert answered(at_api(progress=42), running(42)) is None


def test_succeeded_task_becomes_succeeded_with_its_url() -> None:
    result = RemoteResult(code=0, msg="", status="succeeded", video_url=VIDEO)
    transition = answered(at_api(error_message="earlier try"), result)

    assert transition is not None and transition.status == "succeeded"
    assert transition.status == "succeeded"
    assert transition.change["video_url"] == VIDEO
    assert transition.change["progress"] == 100
    assert transition.change["error_message"] is None
    assert transition.change["finished_at"] == NOW  # how long its model takes


@pytest.mark.parametrize("attempts", [1, 2])
def test_generation_error_is_retried_while_attempts_at_most_max(attempts: int) -> None:
    transition = answered(at_api(attempts), generation_error())

    assert transition is not None
    assert transition.status == "pending"
    assert transition.change["failure_kind"] == FailureKind.GENERATION_ERROR
    assert "boom" in str(transition.change["error_message"])
    # The new attempt has no remote task yet.
    assert (transition.change["grsai_task_id"], transition.change["progress"]) == (None, 0)
    assert "attempts" not in transition.change


@pytest.mark.parametrize("attempts", [3, 4])
def test_generation_error_fails_once_attempts_pass_max(attempts: int) -> None:
    transition = answered(at_api(attempts), generation_error())

    assert transition is not None and transition.status == "failed"
    assert transition.status == "failed"
    assert transition.change["failure_kind"] == FailureKind.GENERATION_ERROR
    assert "boom" in str(transition.change["error_message"])
    # A failed remote task keeps its id, so that a person can look it up upstream.
    assert "grsai_task_id" not in transition.change


def test_max_task_retries_zero_fails_the_first_error() -> None:
    transition = answered(at_api(1), generation_error(), RetryPolicy(max_task_retries=0))
    assert transition is not None
    assert transition.status == "failed"


@pytest.mark.parametrize("reason", ["input_moderation", "output_moderation"])
def test_moderation_is_final_at_once(reason: str) -> None:
    result = RemoteResult(code=0, msg="", status="failed", failure_reason=reason, error="policy")
    transition = answered(at_api(1), result)

    assert transition is not None
    assert transition.status == "failed"
    assert transition.change["failure_kind"] == reason
    assert reason in str(transition.change["error_message"])


@pytest.mark.parametrize(
    ("result", "message"),
    [
        (RemoteResult(code=0, msg="", status="succeeded"), "SUCCEEDED_WITHOUT_VIDEO_URL"),
        (RemoteResult(code=-1, msg="apikey error"), "apikey error"),
    ],
    ids=["no_video_url", "api_error"],
)
def test_final_failures_that_are_not_generation_errors_are_not_retried(
    result: RemoteResult, message: str
) -> None:
    transition = answered(at_api(1), result)

    assert transition is not None
    assert transition.status == "failed"
    assert transition.change["error_message"] == message


def test_not_found_first_sight_starts_the_clock_and_keeps_the_task() -> None:
    transition = answered(at_api(), NOT_FOUND)

    assert transition is not None
    assert transition.change == {"not_found_since": NOW}
    assert transition.status is None


@pytest.mark.parametrize("unknown_for_s", [0, 60, 120])
def test_not_found_inside_grace_leaves_the_task_as_it_is(unknown_for_s: int) -> None:
    since = NOW - timedelta(seconds=unknown_for_s)
    assert answered(at_api(not_found_since=since), NOT_FOUND) is None


@pytest.mark.parametrize("unknown_for_s", [121, 3600])
def test_not_found_past_grace_fails_the_task(unknown_for_s: int) -> None:
    since = NOW - timedelta(seconds=unknown_for_s)
    transition = answered(at_api(1, not_found_since=since), NOT_FOUND)

    assert transition is not None
    assert transition.status == "failed"
    assert transition.change["failure_kind"] == FailureKind.NOT_FOUND
    assert "NOT_FOUND" in str(transition.change["error_message"])
    assert transition.change["not_found_since"] is None


def test_not_found_grace_comes_from_the_policy() -> None:
    task = at_api(not_found_since=NOW - timedelta(seconds=6))

    short = answered(task, NOT_FOUND, RetryPolicy(not_found_grace_s=5.0))

    assert short is not None and short.status == "failed"
    assert answered(task, NOT_FOUND) is None


def test_a_running_answer_after_not_found_stops_the_clock() -> None:
    task = at_api(not_found_since=NOW - timedelta(seconds=10), progress=5)

    transition = answered(task, running(5))

    assert transition is not None
    assert transition.change == {"not_found_since": None}


def test_running_past_the_task_timeout_is_retried_while_attempts_remain() -> None:
    task = at_api(1, submitted_at=NOW - timedelta(seconds=601))

    transition = answered(task, running(50))

    assert transition is not None
    assert transition.status == "pending"
    assert transition.change["failure_kind"] == FailureKind.TIMED_OUT
    assert "TIMED_OUT" in str(transition.change["error_message"])


def test_running_past_the_task_timeout_fails_without_attempts_left() -> None:
    task = at_api(3, submitted_at=NOW - timedelta(seconds=601))

    transition = answered(task, running(50))

    assert transition is not None
    assert transition.status == "failed"
    assert transition.change["failure_kind"] == FailureKind.TIMED_OUT


def test_running_inside_the_task_timeout_keeps_processing() -> None:
    task = at_api(3, submitted_at=NOW - timedelta(seconds=599))

    transition = answered(task, running(50))

    assert transition is not None
    assert transition.change == {"progress": 50}


@pytest.mark.parametrize(
    "task",
    [
        TaskState("task-1", "succeeded", attempts=1, grsai_task_id="remote-1", progress=100),
        TaskState("task-1", "failed", attempts=3, grsai_task_id="remote-1"),
        TaskState("task-1", "pending", attempts=1),
        TaskState("task-1", "processing", attempts=1, grsai_task_id=None),
    ],
    ids=["succeeded", "failed", "pending", "processing_without_remote_task"],
)
def test_an_answer_about_a_task_not_at_the_api_changes_nothing(task: TaskState) -> None:
    success = RemoteResult(code=0, msg="", status="succeeded", video_url=VIDEO)
    for result in (success, generation_error(), running(80), NOT_FOUND):
        assert answered(task, result) is None


# --- submit outcomes -----------------------------------------------------------------------


def test_an_accepted_submit_makes_the_task_processing_and_ends_the_claim() -> None:
    task = TaskState("task-1", "pending", attempts=1, error_message="SUBMIT_FAILED: 503")

    transition = submit(task, Accepted("remote-9", uncertain_tries=2))

    assert transition.status == "processing"
    assert transition.change["grsai_task_id"] == "remote-9"
    assert transition.change["submitted_at"] == NOW
    assert transition.change["attempts"] == 2
    assert transition.change["error_message"] is None
    assert (transition.when_status, transition.ends_claim) == (WAITING, True)
    assert transition.possible_duplicates == 2


def test_a_rejected_submit_is_final_even_with_attempts_left() -> None:
    transition = submit(waiting(), Rejected("prompt violates policy"))

    assert transition.status == "failed"
    assert transition.change["failure_kind"] == FailureKind.API_ERROR
    assert transition.change["error_message"] == "prompt violates policy"
    assert (transition.change["attempts"], transition.change["grsai_task_id"]) == (1, None)
    assert transition.ends_claim


@pytest.mark.parametrize("attempts_before", [0, 1])
def test_submit_failure_is_retried_while_attempts_remain(attempts_before: int) -> None:
    transition = submit(waiting(attempts_before), SubmitFailed("HTTP 503 on /v1/video/veo"))

    assert transition.status == "pending"
    assert transition.change["failure_kind"] == FailureKind.SUBMIT_EXHAUSTED
    assert transition.change["error_message"] == "SUBMIT_FAILED: HTTP 503 on /v1/video/veo"
    assert transition.change["attempts"] == attempts_before + 1
    assert transition.ends_claim


def test_submit_failure_fails_the_task_with_the_last_error_after_the_last_attempt() -> None:
    transition = submit(waiting(2), SubmitFailed("timeout (ReadTimeout)", uncertain_tries=1))

    assert transition.status == "failed"
    assert transition.change["failure_kind"] == FailureKind.SUBMIT_EXHAUSTED
    assert transition.change["error_message"] == "SUBMIT_FAILED: timeout (ReadTimeout)"
    assert transition.change["attempts"] == 3
    assert transition.possible_duplicates == 1


def test_a_task_not_sent_only_loses_its_claim() -> None:
    transition = submit(waiting(1), NotSent())

    assert transition.change == {}
    assert (transition.when_status, transition.ends_claim) == (WAITING, True)
    assert transition.possible_duplicates == 0


def test_an_invalid_stored_task_fails_without_spending_an_attempt() -> None:
    message = "INVALID_INPUT: model: must be one of sora-2, veo-flash, veo-pro"

    transition = submit(waiting(), FoundInvalid(message))

    assert transition.status == "failed"
    assert transition.change["failure_kind"] == FailureKind.INVALID_INPUT
    assert transition.change["error_message"] == message
    assert "attempts" not in transition.change
    assert transition.ends_claim


def test_default_policy_is_two_retries_and_120_s_grace() -> None:
    policy = RetryPolicy()
    assert submit(waiting(1), SubmitFailed("x"), policy).status == "pending"
    assert submit(waiting(2), SubmitFailed("x"), policy).status == "failed"
    inside = at_api(not_found_since=NOW - timedelta(seconds=119))
    past = at_api(not_found_since=NOW - timedelta(seconds=121))
    assert answered(inside, NOT_FOUND, policy) is None
    failed = answered(past, NOT_FOUND, policy)
    assert failed is not None and failed.status == "failed"


def test_a_task_once_accepted_is_judged_by_its_new_state() -> None:
    accepted = submit(waiting(), Accepted("remote-7"))
    now_at_api = waiting().after(accepted)

    assert (now_at_api.status, now_at_api.grsai_task_id, now_at_api.attempts) == (
        "processing", "remote-7", 1,
    )  # fmt: skip
    success = RemoteResult(code=0, msg="", status="succeeded", video_url=VIDEO)
    done = answered(now_at_api, success)
    assert done is not None and done.when_remote_id == "remote-7"
    assert now_at_api.after(done).status == "succeeded"


# --- retries by backfill and cancels -------------------------------------------------------


def test_a_retry_by_backfill_starts_the_failed_task_afresh() -> None:
    task = TaskState("task-1", "failed", attempts=3, grsai_task_id="remote-1", progress=70)

    transition = decide(task, RetriedByBackfill(reservation=2), now=NOW, policy=POLICY)

    assert transition is not None
    assert transition.when_status == frozenset({"failed"})
    assert transition.change == {
        "status": "pending",
        "attempts": 0,
        "progress": 0,
        "grsai_task_id": None,
        "submitted_at": None,
        "not_found_since": None,
        "video_url": None,
        "error_message": None,
        "failure_kind": None,
        "finished_at": None,
        "reservation": 2,
    }


def test_a_task_out_of_backfill_retries_says_its_failure_is_final_once() -> None:
    task = TaskState("task-1", "failed", error_message="error: upstream crashed")

    final = decide(task, RetriesExhausted(retries=3), now=NOW, policy=POLICY)

    assert final is not None and final.when_status == frozenset({"failed"})
    message = "error: upstream crashed (final: retried by backfill 3 time(s), the limit)"
    assert final.change == {"error_message": message, "failure_kind": "retries_exhausted"}
    written = TaskState("task-1", "failed", error_message=message)
    assert decide(written, RetriesExhausted(retries=3), now=NOW, policy=POLICY) is None
    assert POLICY.may_retry_by_backfill(3) and not POLICY.may_retry_by_backfill(4)


def test_a_refused_retry_says_why_once() -> None:
    task = TaskState("task-1", "failed", error_message="error: upstream crashed")

    refused = decide(task, RetryRefused(needed=40, balance=3), now=NOW, policy=POLICY)

    assert refused is not None
    message = "INSUFFICIENT_CREDITS: a retry needs 40 credits but the balance is 3"
    assert refused.change == {"error_message": message}
    assert refused.when_status == frozenset({"failed"})
    again = decide(task.after(refused), RetryRefused(40, 3), now=NOW, policy=POLICY)
    assert again is None
    # A different balance is news: the message follows it.
    later = decide(task.after(refused), RetryRefused(40, 10), now=NOW, policy=POLICY)
    assert later is not None and "balance is 10" in str(later.change["error_message"])


def test_a_cancel_fails_an_unsent_task_with_a_cancelled_message() -> None:
    transition = decide(waiting(1), Cancelled("by the user"), now=NOW, policy=POLICY)

    assert transition is not None
    assert transition.status == "failed"
    assert str(transition.change["error_message"]).startswith("CANCELLED:")
    assert "by the user" in str(transition.change["error_message"])
    assert transition.change["failure_kind"] == FailureKind.CANCELLED
    assert transition.when_status == WAITING
