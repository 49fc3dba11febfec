"""SPEC 3: how a poll answer is normalised, and what a task becomes after it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from grsai_pipeline.domain.states import (
    SUCCEEDED_WITHOUT_VIDEO_URL,
    FailureKind,
    PollOutcome,
    RemoteResult,
    RetryPolicy,
    TaskStatus,
    after_poll,
    after_submit_failure,
    normalise,
)

NOW = datetime(2025, 1, 1, 12, 0, 0, tzinfo=UTC)
VIDEO = "https://videos.example.com/v.mp4"


# --- normalise -----------------------------------------------------------------------------


@pytest.mark.parametrize("progress", [0, 37, 99])
def test_running_stays_processing_with_its_progress(progress: int) -> None:
    outcome = normalise(RemoteResult(code=0, msg="success", status="running", progress=progress))
    assert outcome == PollOutcome("running", progress=progress)


def test_running_progress_out_of_range_is_clamped() -> None:
    high = normalise(RemoteResult(code=0, msg="", status="running", progress=140))
    low = normalise(RemoteResult(code=0, msg="", status="running", progress=-5))
    assert (high.progress, low.progress) == (100, 0)


def test_succeeded_with_url_sets_the_video_and_progress_100() -> None:
    outcome = normalise(
        RemoteResult(code=0, msg="success", status="succeeded", progress=87, video_url=VIDEO)
    )
    assert outcome.state == "succeeded"
    assert outcome.video_url == VIDEO
    assert outcome.progress == 100
    assert outcome.error_message is None


@pytest.mark.parametrize("video_url", [None, ""])
def test_succeeded_without_url_fails_with_succeeded_without_video_url(
    video_url: str | None,
) -> None:
    outcome = normalise(
        RemoteResult(code=0, msg="success", status="succeeded", progress=100, video_url=video_url)
    )
    assert outcome.state == "failed"
    assert outcome.error_message == SUCCEEDED_WITHOUT_VIDEO_URL == "SUCCEEDED_WITHOUT_VIDEO_URL"
    assert outcome.failure_kind is FailureKind.NO_VIDEO_URL
    assert outcome.video_url is None


@pytest.mark.parametrize(
    ("failure_reason", "kind"),
    [
        ("input_moderation", FailureKind.INPUT_MODERATION),
        ("output_moderation", FailureKind.OUTPUT_MODERATION),
        ("error", FailureKind.GENERATION_ERROR),
    ],
)
def test_failed_takes_its_message_from_failure_reason_and_error(
    failure_reason: str, kind: FailureKind
) -> None:
    error = f"details of {failure_reason} 42"
    outcome = normalise(
        RemoteResult(
            code=0, msg="success", status="failed", failure_reason=failure_reason, error=error
        )
    )
    assert outcome.state == "failed"
    assert outcome.failure_kind is kind
    assert outcome.error_message is not None
    assert failure_reason in outcome.error_message
    assert error in outcome.error_message
    assert outcome.video_url is None


def test_failed_without_any_detail_still_has_a_message() -> None:
    outcome = normalise(RemoteResult(code=0, msg="success", status="failed"))
    assert outcome.state == "failed"
    assert outcome.error_message
    assert outcome.failure_kind is FailureKind.GENERATION_ERROR


@pytest.mark.parametrize(("code", "msg"), [(-1, "apikey error"), (500, "server busy"), (-2, "x")])
def test_code_not_zero_fails_with_msg(code: int, msg: str) -> None:
    # Even when data says succeeded, the code wins.
    outcome = normalise(RemoteResult(code=code, msg=msg, status="succeeded", video_url=VIDEO))
    assert outcome.state == "failed"
    assert outcome.error_message == msg
    assert outcome.failure_kind is FailureKind.API_ERROR
    assert outcome.video_url is None


def test_code_not_zero_without_msg_names_the_code() -> None:
    outcome = normalise(RemoteResult(code=-7, msg=""))
    assert outcome.state == "failed"
    assert outcome.error_message is not None and "-7" in outcome.error_message


def test_code_minus_22_is_not_found() -> None:
    outcome = normalise(RemoteResult(code=-22, msg="task not found"))
    assert outcome.state == "not_found"
    assert outcome.error_message is None


@pytest.mark.parametrize("status", ["queued", "pending", "", None])
def test_unknown_status_counts_as_running(status: str | None) -> None:
    outcome = normalise(RemoteResult(code=0, msg="success", status=status, progress=12))
    assert outcome == PollOutcome("running", progress=12)


# --- after_poll ----------------------------------------------------------------------------

POLICY = RetryPolicy(max_task_retries=2, not_found_grace_s=120.0, task_timeout_s=600.0)


def poll(outcome: PollOutcome, *, attempts: int = 1, **kwargs: object):
    args: dict[str, object] = {
        "attempts": attempts,
        "submitted_at": NOW - timedelta(seconds=30),
        "not_found_since": None,
        "now": NOW,
        "policy": POLICY,
    }
    args.update(kwargs)
    return after_poll(outcome, **args)  # type: ignore[arg-type]


def test_running_keeps_processing_and_stores_progress() -> None:
    change = poll(PollOutcome("running", progress=42))
    assert change is not None
    assert change.status is TaskStatus.PROCESSING
    assert change.progress == 42
    assert change.error_message is None


def test_succeeded_task_becomes_succeeded_with_its_url() -> None:
    change = poll(normalise(RemoteResult(code=0, msg="", status="succeeded", video_url=VIDEO)))
    assert change is not None
    assert change.status is TaskStatus.SUCCEEDED
    assert change.video_url == VIDEO
    assert change.progress == 100


def generation_error() -> PollOutcome:
    return normalise(
        RemoteResult(code=0, msg="", status="failed", failure_reason="error", error="boom")
    )


@pytest.mark.parametrize("attempts", [1, 2])
def test_generation_error_is_retried_while_attempts_at_most_max(attempts: int) -> None:
    change = poll(generation_error(), attempts=attempts)
    assert change is not None
    assert change.status is TaskStatus.PENDING
    assert change.failure_kind is FailureKind.GENERATION_ERROR
    assert change.error_message is not None and "boom" in change.error_message


@pytest.mark.parametrize("attempts", [3, 4])
def test_generation_error_fails_once_attempts_pass_max(attempts: int) -> None:
    change = poll(generation_error(), attempts=attempts)
    assert change is not None
    assert change.status is TaskStatus.FAILED
    assert change.failure_kind is FailureKind.GENERATION_ERROR
    assert change.error_message is not None and "boom" in change.error_message


def test_max_task_retries_zero_fails_the_first_error() -> None:
    change = poll(generation_error(), attempts=1, policy=RetryPolicy(max_task_retries=0))
    assert change is not None
    assert change.status is TaskStatus.FAILED


@pytest.mark.parametrize("reason", ["input_moderation", "output_moderation"])
def test_moderation_is_final_at_once(reason: str) -> None:
    outcome = normalise(
        RemoteResult(code=0, msg="", status="failed", failure_reason=reason, error="policy")
    )
    change = poll(outcome, attempts=1)
    assert change is not None
    assert change.status is TaskStatus.FAILED
    assert change.failure_kind == reason
    assert change.error_message is not None and reason in change.error_message


@pytest.mark.parametrize(
    "result",
    [
        RemoteResult(code=0, msg="", status="succeeded"),
        RemoteResult(code=-1, msg="apikey error"),
    ],
    ids=["no_video_url", "api_error"],
)
def test_final_failures_that_are_not_generation_errors_are_not_retried(
    result: RemoteResult,
) -> None:
    change = poll(normalise(result), attempts=1)
    assert change is not None
    assert change.status is TaskStatus.FAILED
    assert change.error_message == normalise(result).error_message


def test_not_found_first_sight_starts_the_clock_and_keeps_the_task() -> None:
    change = poll(PollOutcome("not_found"), not_found_since=None)
    assert change is not None
    assert change.status is TaskStatus.PROCESSING
    assert change.not_found_since == NOW
    assert change.error_message is None


@pytest.mark.parametrize("unknown_for_s", [0, 60, 120])
def test_not_found_inside_grace_leaves_the_task_as_it_is(unknown_for_s: int) -> None:
    change = poll(PollOutcome("not_found"), not_found_since=NOW - timedelta(seconds=unknown_for_s))
    assert change is None


@pytest.mark.parametrize("unknown_for_s", [121, 3600])
def test_not_found_past_grace_fails_the_task(unknown_for_s: int) -> None:
    change = poll(
        PollOutcome("not_found"),
        attempts=1,
        not_found_since=NOW - timedelta(seconds=unknown_for_s),
    )
    assert change is not None
    assert change.status is TaskStatus.FAILED
    assert change.failure_kind is FailureKind.NOT_FOUND
    assert change.error_message is not None and "NOT_FOUND" in change.error_message


def test_not_found_grace_comes_from_the_policy() -> None:
    short = RetryPolicy(not_found_grace_s=5.0)
    since = NOW - timedelta(seconds=6)
    change = poll(PollOutcome("not_found"), not_found_since=since, policy=short)
    assert change is not None and change.status is TaskStatus.FAILED
    assert poll(PollOutcome("not_found"), not_found_since=since) is None


def test_running_past_the_task_timeout_is_retried_while_attempts_remain() -> None:
    change = poll(
        PollOutcome("running", progress=50),
        attempts=1,
        submitted_at=NOW - timedelta(seconds=601),
    )
    assert change is not None
    assert change.status is TaskStatus.PENDING
    assert change.failure_kind is FailureKind.TIMED_OUT
    assert change.error_message is not None and "TIMED_OUT" in change.error_message


def test_running_past_the_task_timeout_fails_without_attempts_left() -> None:
    change = poll(
        PollOutcome("running", progress=50),
        attempts=3,
        submitted_at=NOW - timedelta(seconds=601),
    )
    assert change is not None
    assert change.status is TaskStatus.FAILED
    assert change.failure_kind is FailureKind.TIMED_OUT


def test_running_inside_the_task_timeout_keeps_processing() -> None:
    change = poll(
        PollOutcome("running", progress=50), attempts=3, submitted_at=NOW - timedelta(seconds=599)
    )
    assert change is not None
    assert change.status is TaskStatus.PROCESSING


# --- after_submit_failure ------------------------------------------------------------------


@pytest.mark.parametrize("attempts", [1, 2])
def test_submit_failure_is_retried_while_attempts_remain(attempts: int) -> None:
    change = after_submit_failure("HTTP 503 on /v1/video/veo", attempts=attempts, policy=POLICY)
    assert change.status is TaskStatus.PENDING
    assert change.failure_kind is FailureKind.SUBMIT_EXHAUSTED
    assert change.error_message == "SUBMIT_FAILED: HTTP 503 on /v1/video/veo"


def test_submit_failure_fails_the_task_with_the_last_error_after_the_last_attempt() -> None:
    change = after_submit_failure("timeout (ReadTimeout)", attempts=3, policy=POLICY)
    assert change.status is TaskStatus.FAILED
    assert change.failure_kind is FailureKind.SUBMIT_EXHAUSTED
    assert change.error_message == "SUBMIT_FAILED: timeout (ReadTimeout)"


def test_default_policy_is_two_retries_and_120_s_grace() -> None:
    policy = RetryPolicy()
    assert after_submit_failure("x", attempts=2, policy=policy).status is TaskStatus.PENDING
    assert after_submit_failure("x", attempts=3, policy=policy).status is TaskStatus.FAILED
    inside = NOW - timedelta(seconds=119)
    past = NOW - timedelta(seconds=121)
    assert poll(PollOutcome("not_found"), not_found_since=inside, policy=policy) is None
    failed = poll(PollOutcome("not_found"), not_found_since=past, policy=policy)
    assert failed is not None and failed.status is TaskStatus.FAILED
