"""Tasks at the API and what a poll answer writes (SPEC 3): final is final, and an answer
about an older remote task never touches a newer attempt."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import sqlalchemy as sa

from grsai_pipeline.domain.states import (
    FailureKind,
    RemoteResult,
    RetryPolicy,
    TaskChange,
    TaskStatus,
    after_poll,
    normalise,
)
from grsai_pipeline.store.claims import SubmitOutcome, claim_pending_tasks, record_submit_outcomes
from grsai_pipeline.store.polling import PollTarget, processing_tasks, record_poll_changes
from grsai_pipeline_tests.helpers import new_batch, table_snapshot
from grsai_pipeline_tests.test_store.store_support import (
    VEO_PRO,
    set_task,
    sora,
    task_row,
    tasks_of,
)

POLICY = RetryPolicy(max_task_retries=2)
VIDEO = "https://cdn.example.com/video.mp4"


def _failed(message: str, kind: FailureKind = FailureKind.API_ERROR) -> TaskChange:
    return TaskChange(TaskStatus.FAILED, error_message=message, failure_kind=kind)


def _submitted(engine: sa.Engine, tasks: list[dict[str, object]]) -> tuple[str, list[PollTarget]]:
    """A batch whose tasks were all accepted by the API as ``remote-<index>``."""
    batch_id = new_batch(engine, tasks)
    claimed = claim_pending_tasks(engine, [batch_id], "runner", 100, lease_s=300)
    record_submit_outcomes(
        engine,
        "runner",
        [SubmitOutcome(c, grsai_task_id=f"remote-{c.batch_index}") for c in claimed],
        POLICY,
    )
    return batch_id, processing_tasks(engine, [batch_id])


def test_processing_tasks_lists_the_batch_tasks_at_the_api(engine: sa.Engine) -> None:
    batch_id, targets = _submitted(engine, [sora("a"), VEO_PRO, sora("c")])
    other_batch, _ = _submitted(engine, [sora("elsewhere")])
    ids = [t["id"] for t in tasks_of(engine, batch_id)]
    set_task(engine, ids[2], status="succeeded", video_url=VIDEO, progress=100)

    listed = processing_tasks(engine, [batch_id])

    assert [(t.id, t.grsai_task_id, t.is_sora, t.attempts) for t in listed] == [
        (ids[0], "remote-0", True, 1),
        (ids[1], "remote-1", False, 1),
    ]
    assert all(t.submitted_at is not None and t.batch_job_id == batch_id for t in listed)
    assert len(targets) == 3
    assert [t.batch_job_id for t in processing_tasks(engine, [other_batch])] == [other_batch]


def test_a_success_stores_the_video_and_full_progress(engine: sa.Engine) -> None:
    _batch_id, (target,) = _submitted(engine, [sora()])

    changed = record_poll_changes(
        engine, [(target, TaskChange(TaskStatus.SUCCEEDED, progress=100, video_url=VIDEO))]
    )

    assert changed == 1
    row = task_row(engine, target.id)
    assert (row["status"], row["video_url"], row["progress"]) == ("succeeded", VIDEO, 100)
    assert row["error_message"] is None


def test_progress_is_stored_while_running_and_an_unchanged_answer_writes_nothing(
    engine: sa.Engine,
) -> None:
    _batch_id, (target,) = _submitted(engine, [sora()])

    assert record_poll_changes(engine, [(target, TaskChange(TaskStatus.PROCESSING, 40))]) == 1
    assert task_row(engine, target.id)["progress"] == 40
    (again,) = processing_tasks(engine, [target.batch_job_id])
    before = table_snapshot(engine)

    assert record_poll_changes(engine, [(again, TaskChange(TaskStatus.PROCESSING, 40))]) == 0
    assert table_snapshot(engine) == before


def test_a_failure_stores_its_message_and_kind(engine: sa.Engine) -> None:
    _batch_id, (target,) = _submitted(engine, [sora()])
    result = RemoteResult(
        code=0, msg="ok", status="failed", failure_reason="input_moderation", error="nsfw"
    )
    change = after_poll(
        normalise(result),
        attempts=target.attempts,
        submitted_at=target.submitted_at,
        not_found_since=None,
        now=datetime.now(UTC),
        policy=POLICY,
    )
    assert change is not None

    record_poll_changes(engine, [(target, change)])

    row = task_row(engine, target.id)
    assert row["status"] == "failed"
    assert row["failure_kind"] == "input_moderation"
    assert "input_moderation" in row["error_message"] and "nsfw" in row["error_message"]
    assert row["video_url"] is None


def test_a_generation_error_with_attempts_left_goes_back_to_pending(engine: sa.Engine) -> None:
    _batch_id, (target,) = _submitted(engine, [sora()])
    change = TaskChange(
        TaskStatus.PENDING, error_message="error: gpu", failure_kind=FailureKind.GENERATION_ERROR
    )

    record_poll_changes(engine, [(target, change)])

    row = task_row(engine, target.id)
    assert (row["status"], row["grsai_task_id"], row["progress"]) == ("pending", None, 0)
    assert row["attempts"] == 1
    assert row["error_message"] == "error: gpu"


def test_a_late_answer_never_moves_a_final_task_back(engine: sa.Engine) -> None:
    _batch_id, (won, lost) = _submitted(engine, [sora("a"), sora("b")])
    record_poll_changes(
        engine,
        [
            (won, TaskChange(TaskStatus.SUCCEEDED, progress=100, video_url=VIDEO)),
            (
                lost,
                TaskChange(
                    TaskStatus.FAILED, error_message="x", failure_kind=FailureKind.API_ERROR
                ),
            ),
        ],
    )
    before = table_snapshot(engine)

    late = [
        TaskChange(TaskStatus.PROCESSING, progress=55),
        _failed("late"),
        TaskChange(TaskStatus.SUCCEEDED, progress=100, video_url="https://cdn.example.com/other"),
        TaskChange(
            TaskStatus.PENDING, error_message="e", failure_kind=FailureKind.GENERATION_ERROR
        ),
    ]
    for change in late:
        record_poll_changes(engine, [(won, change), (lost, change)])

    assert table_snapshot(engine) == before
    assert task_row(engine, won.id)["video_url"] == VIDEO
    assert task_row(engine, lost.id)["status"] == "failed"


def test_an_answer_about_an_older_remote_task_does_nothing(engine: sa.Engine) -> None:
    _batch_id, (old,) = _submitted(engine, [sora()])
    # The task was resubmitted since: it is processing again under a new remote id.
    set_task(engine, old.id, grsai_task_id="remote-new", progress=10)
    before = table_snapshot(engine)

    for change in (
        TaskChange(TaskStatus.SUCCEEDED, progress=100, video_url=VIDEO),
        _failed("old"),
        TaskChange(TaskStatus.PROCESSING, progress=90),
    ):
        record_poll_changes(engine, [(old, change)])

    assert table_snapshot(engine) == before
    (current,) = processing_tasks(engine, [old.batch_job_id])
    assert current.grsai_task_id == "remote-new"
    record_poll_changes(engine, [(current, TaskChange(TaskStatus.SUCCEEDED, 100, VIDEO))])
    assert task_row(engine, old.id)["status"] == "succeeded"


def test_the_not_found_clock_is_stored_and_cleared(engine: sa.Engine) -> None:
    _batch_id, (target,) = _submitted(engine, [sora()])
    since = datetime.now(UTC) - timedelta(seconds=5)

    record_poll_changes(
        engine, [(target, TaskChange(TaskStatus.PROCESSING, not_found_since=since))]
    )
    (unknown,) = processing_tasks(engine, [target.batch_job_id])
    assert unknown.not_found_since is not None
    assert abs((unknown.not_found_since - since).total_seconds()) < 0.001

    record_poll_changes(engine, [(unknown, TaskChange(TaskStatus.SUCCEEDED, 100, VIDEO))])
    assert task_row(engine, target.id)["not_found_since"] is None
