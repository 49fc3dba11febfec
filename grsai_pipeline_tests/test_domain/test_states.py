"""SPEC 3: how a poll or callback answer is normalised (what the task becomes after it is
:mod:`test_lifecycle`'s subject)."""

from __future__ import annotations

import pytest

from grsai_pipeline.domain.states import (
    BACKFILL_RETRYABLE,
    SUCCEEDED_WITHOUT_VIDEO_URL,
    FailureKind,
    PollOutcome,
    RemoteResult,
    normalise,
)

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


@pytest.mark.parametrize("status", ["queued", "pending", "processing", "RUNNING", "", None])
def test_work_not_done_yet_counts_as_running(status: str | None) -> None:
    outcome = normalise(RemoteResult(code=0, msg="success", status=status, progress=12))
    assert outcome == PollOutcome("running", progress=12)


@pytest.mark.parametrize(
    ("status", "error", "message"),
    [
        ("violation", "content policy", "violation: content policy"),
        ("cancelled", None, "cancelled: success"),
        ("mystery", "", "mystery: success"),
    ],
)
def test_a_status_spec_3_does_not_name_is_final(
    status: str, error: str | None, message: str
) -> None:
    """Issue 25: nothing waits forever on a status it cannot understand; not retried."""
    outcome = normalise(RemoteResult(code=0, msg="success", status=status, error=error))
    assert outcome == PollOutcome(
        "failed", error_message=message, failure_kind=FailureKind.UNKNOWN_STATUS
    )
    assert FailureKind.UNKNOWN_STATUS not in BACKFILL_RETRYABLE
