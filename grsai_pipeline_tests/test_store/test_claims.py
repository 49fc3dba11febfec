"""Claims: which runner submits which task, and what each submit came to (SPEC 3, 7)."""

from __future__ import annotations

import time

import pytest
import sqlalchemy as sa

from grsai_pipeline.domain.states import RetryPolicy
from grsai_pipeline.store.claims import (
    ClaimedTask,
    SubmitOutcome,
    claim_pending_tasks,
    record_submit_outcomes,
)
from grsai_pipeline.store.retries import prepare_batch
from grsai_pipeline_tests.helpers import new_batch, table_snapshot
from grsai_pipeline_tests.test_store.store_support import (
    VEO_PRO,
    batch_row,
    execute,
    insert_batch,
    insert_task,
    run_together,
    set_task,
    sora,
    task_ids,
    task_row,
    tasks_of,
)

LONG_LEASE = 300.0
POLICY = RetryPolicy(max_task_retries=2)


def _batch(engine: sa.Engine, n: int) -> str:
    return new_batch(engine, [sora(f"task {i}") for i in range(n)])


def _claim(
    engine: sa.Engine, batch_id: str, runner: str, limit: int = 100, lease_s: float = LONG_LEASE
) -> list[ClaimedTask]:
    return claim_pending_tasks(engine, [batch_id], runner, limit, lease_s=lease_s)


def _claimed_by(engine: sa.Engine, batch_id: str) -> list[str | None]:
    return [t["claimed_by"] for t in tasks_of(engine, batch_id)]


def test_claims_at_most_limit_lowest_index_first_and_marks_the_batch_running(
    engine: sa.Engine,
) -> None:
    batch_id = _batch(engine, 5)
    assert batch_row(engine, batch_id)["status"] == "pending"

    claimed = _claim(engine, batch_id, "runner-a", limit=3)

    assert [c.batch_index for c in claimed] == [0, 1, 2]
    assert [c.id for c in claimed] == task_ids(engine, batch_id)[:3]
    assert [c.spec.prompt for c in claimed if c.spec] == ["task 0", "task 1", "task 2"]
    assert all(c.invalid_reason is None and c.attempts == 0 for c in claimed)
    assert _claimed_by(engine, batch_id) == ["runner-a"] * 3 + [None, None]
    assert all(t["claimed_at"] is not None for t in tasks_of(engine, batch_id)[:3])
    assert {t["status"] for t in tasks_of(engine, batch_id)} == {"pending"}
    assert batch_row(engine, batch_id)["status"] == "running"


def test_claims_follow_batch_index_not_the_order_rows_were_written(engine: sa.Engine) -> None:
    batch_id = insert_batch(engine, total_tasks=5)
    for index in (4, 2, 0, 3, 1):
        insert_task(engine, batch_id, index, prompt=f"index {index}")

    claimed = _claim(engine, batch_id, "runner-a", limit=3)

    assert [c.batch_index for c in claimed] == [0, 1, 2]
    assert [c.spec.prompt for c in claimed if c.spec] == ["index 0", "index 1", "index 2"]


def test_only_waiting_tasks_are_claimed_and_queued_counts_as_waiting(engine: sa.Engine) -> None:
    batch_id = _batch(engine, 4)
    ids = task_ids(engine, batch_id)
    set_task(engine, ids[0], status="processing", grsai_task_id="g-0")
    set_task(engine, ids[1], status="succeeded", video_url="https://v/1.mp4")
    set_task(engine, ids[2], status="queued")

    claimed = _claim(engine, batch_id, "runner-a")

    assert [c.batch_index for c in claimed] == [2, 3]


def test_a_task_claimed_by_another_runner_is_not_returned_within_the_lease(
    engine: sa.Engine,
) -> None:
    batch_id = _batch(engine, 4)
    first = _claim(engine, batch_id, "runner-a", limit=2)

    second = _claim(engine, batch_id, "runner-b")
    third = _claim(engine, batch_id, "runner-c")

    assert [c.batch_index for c in first] == [0, 1]
    assert [c.batch_index for c in second] == [2, 3]
    assert third == []
    assert _claimed_by(engine, batch_id) == ["runner-a", "runner-a", "runner-b", "runner-b"]


def test_a_claim_whose_lease_passed_can_be_taken_by_another_runner(engine: sa.Engine) -> None:
    batch_id = _batch(engine, 2)
    _claim(engine, batch_id, "runner-a")
    assert _claim(engine, batch_id, "runner-b", lease_s=0.2) == []

    time.sleep(0.3)
    taken = _claim(engine, batch_id, "runner-b", lease_s=0.2)

    assert [c.batch_index for c in taken] == [0, 1]
    assert _claimed_by(engine, batch_id) == ["runner-b", "runner-b"]


def test_runners_claiming_at_once_never_share_a_task(engine: sa.Engine) -> None:
    batch_id = _batch(engine, 24)
    runners = [f"runner-{i}" for i in range(4)]

    batches = run_together(
        [lambda r=r: _claim(engine, batch_id, r, limit=8) for r in runners]  # type: ignore[misc]
    )

    claimed_ids = [c.id for claims in batches for c in claims]
    assert len(claimed_ids) == len(set(claimed_ids)) == 24
    by_runner = {r: {c.id for c in claims} for r, claims in zip(runners, batches, strict=True)}
    for task in tasks_of(engine, batch_id):
        assert task["id"] in by_runner[task["claimed_by"]]


def test_a_row_another_writer_stored_invalidly_is_claimed_with_its_reason(
    engine: sa.Engine,
) -> None:
    batch_id = _batch(engine, 1)
    insert_task(engine, batch_id, 1, model="sora-3")
    insert_task(engine, batch_id, 2, prompt="   ", status="queued")

    claimed = _claim(engine, batch_id, "runner-a")

    assert [c.batch_index for c in claimed] == [0, 1, 2]
    assert claimed[0].spec is not None and claimed[0].invalid_reason is None
    for bad, field in zip(claimed[1:], ["model", "prompt"], strict=True):
        assert bad.spec is None
        assert bad.invalid_reason is not None
        assert bad.invalid_reason.startswith("INVALID_INPUT:")
        assert field in bad.invalid_reason


def test_an_accepted_submit_makes_the_task_processing(engine: sa.Engine) -> None:
    batch_id = _batch(engine, 2)
    first, second = _claim(engine, batch_id, "runner-a")

    tally = record_submit_outcomes(
        engine, "runner-a", [SubmitOutcome(first, grsai_task_id="remote-1")], POLICY
    )

    assert tally == {"processing": 1}
    task = task_row(engine, first.id)
    assert task["status"] == "processing"
    assert task["grsai_task_id"] == "remote-1"
    assert task["attempts"] == 1
    assert task["submitted_at"] is not None
    assert (task["claimed_by"], task["claimed_at"]) == (None, None)
    # The other claim is untouched.
    assert task_row(engine, second.id)["claimed_by"] == "runner-a"


def test_a_rejected_submit_fails_the_task_as_an_api_error(engine: sa.Engine) -> None:
    batch_id = _batch(engine, 1)
    (task,) = _claim(engine, batch_id, "runner-a")

    tally = record_submit_outcomes(
        engine, "runner-a", [SubmitOutcome(task, rejected="prompt violates policy")], POLICY
    )

    assert tally == {"failed": 1}
    row = task_row(engine, task.id)
    assert row["status"] == "failed"
    assert row["failure_kind"] == "api_error"
    assert row["error_message"] == "prompt violates policy"
    assert row["grsai_task_id"] is None
    assert row["attempts"] == 1
    assert row["claimed_by"] is None


def test_an_exhausted_submit_is_retried_while_attempts_remain_then_fails(
    engine: sa.Engine,
) -> None:
    batch_id = _batch(engine, 1)
    statuses, attempts = [], []

    for _ in range(POLICY.max_task_retries + 1):
        (task,) = _claim(engine, batch_id, "runner-a")
        record_submit_outcomes(
            engine, "runner-a", [SubmitOutcome(task, exhausted="HTTP 503")], POLICY
        )
        row = task_row(engine, task.id)
        statuses.append(row["status"])
        attempts.append(row["attempts"])
        assert row["error_message"].startswith("SUBMIT_FAILED:")
        assert "HTTP 503" in row["error_message"]
        assert row["failure_kind"] == "submit_exhausted"
        assert row["claimed_by"] is None

    assert statuses == ["pending", "pending", "failed"]
    assert attempts == [1, 2, 3]
    assert _claim(engine, batch_id, "runner-a") == []


def test_a_released_task_is_untouched_except_its_claim(engine: sa.Engine) -> None:
    batch_id = _batch(engine, 1)
    (task,) = _claim(engine, batch_id, "runner-a")
    before = task_row(engine, task.id)

    tally = record_submit_outcomes(engine, "runner-a", [SubmitOutcome(task)], POLICY)

    assert tally == {"released": 1}
    after = task_row(engine, task.id)
    assert (after["claimed_by"], after["claimed_at"]) == (None, None)
    ignored = {"claimed_by", "claimed_at", "updated_at"}
    assert {k: v for k, v in after.items() if k not in ignored} == {
        k: v for k, v in before.items() if k not in ignored
    }
    assert [c.id for c in _claim(engine, batch_id, "runner-b")] == [task.id]


def test_outcomes_of_one_runner_are_written_together(engine: sa.Engine) -> None:
    batch_id = new_batch(engine, [sora("a"), VEO_PRO, sora("c"), sora("d")])
    a, b, c, d = _claim(engine, batch_id, "runner-a")

    tally = record_submit_outcomes(
        engine,
        "runner-a",
        [
            SubmitOutcome(a, grsai_task_id="remote-a"),
            SubmitOutcome(b, rejected="bad request"),
            SubmitOutcome(c, exhausted="timeout"),
            SubmitOutcome(d),
        ],
        POLICY,
    )

    assert tally == {"processing": 1, "failed": 1, "pending": 1, "released": 1}
    assert [t["status"] for t in tasks_of(engine, batch_id)] == [
        "processing", "failed", "pending", "pending",
    ]  # fmt: skip
    assert [t["grsai_task_id"] for t in tasks_of(engine, batch_id)] == [
        "remote-a", None, None, None,
    ]  # fmt: skip
    assert [t["attempts"] for t in tasks_of(engine, batch_id)] == [1, 1, 1, 0]
    assert _claimed_by(engine, batch_id) == [None] * 4


def _lost_claims(engine: sa.Engine, n: int) -> tuple[list[ClaimedTask], list[ClaimedTask]]:
    """Runner a claims n tasks, its lease passes, and runner b takes them over."""
    batch_id = _batch(engine, n)
    stale = _claim(engine, batch_id, "runner-a", lease_s=0.1)
    time.sleep(0.2)
    taken = _claim(engine, batch_id, "runner-b", lease_s=0.1)
    assert [c.id for c in taken] == [c.id for c in stale]
    return stale, taken


def test_an_outcome_for_a_claim_this_runner_lost_changes_nothing(engine: sa.Engine) -> None:
    stale, taken = _lost_claims(engine, 4)
    before = table_snapshot(engine)

    record_submit_outcomes(
        engine,
        "runner-a",
        [
            SubmitOutcome(stale[0], grsai_task_id="remote-late"),
            SubmitOutcome(stale[1], rejected="late rejection"),
            SubmitOutcome(stale[2], exhausted="late timeout"),
            SubmitOutcome(stale[3]),
        ],
        POLICY,
    )

    assert table_snapshot(engine) == before
    # The runner that holds the claims still records its own outcomes.
    record_submit_outcomes(
        engine,
        "runner-b",
        [SubmitOutcome(t, grsai_task_id=f"remote-b{i}") for i, t in enumerate(taken)],
        POLICY,
    )
    after = [task_row(engine, t.id) for t in taken]
    assert [(r["status"], r["grsai_task_id"], r["claimed_by"]) for r in after] == [
        ("processing", f"remote-b{i}", None) for i in range(4)
    ]


def test_a_lost_claim_is_not_counted_as_a_submit(engine: sa.Engine) -> None:
    stale, _taken = _lost_claims(engine, 1)

    tally = record_submit_outcomes(
        engine, "runner-a", [SubmitOutcome(stale[0], grsai_task_id="remote-late")], POLICY
    )

    assert task_row(engine, stale[0].id)["status"] == "pending"
    assert tally["processing"] == 0


def test_an_outcome_for_a_task_no_longer_waiting_changes_nothing(engine: sa.Engine) -> None:
    batch_id = _batch(engine, 1)
    (task,) = _claim(engine, batch_id, "runner-a")
    # Meanwhile an operator finished the task by hand (claim still recorded on the row).
    set_task(engine, task.id, status="succeeded", video_url="https://v/0.mp4", progress=100)
    before = table_snapshot(engine)

    record_submit_outcomes(
        engine, "runner-a", [SubmitOutcome(task, rejected="too late to matter")], POLICY
    )

    assert table_snapshot(engine) == before


def _slow_claims(engine: sa.Engine, runner: str, seconds: float) -> None:
    """Make each row ``runner`` claims take ``seconds`` after its lock is taken (PostgreSQL)."""
    execute(
        engine,
        "CREATE FUNCTION test_slow_claim() RETURNS trigger LANGUAGE plpgsql AS $$"
        f" BEGIN PERFORM pg_sleep({seconds}); RETURN NEW; END $$",
    )
    execute(
        engine,
        "CREATE TRIGGER test_slow_claim BEFORE UPDATE ON video_tasks FOR EACH ROW"
        f" WHEN (NEW.claimed_by = '{runner}' AND OLD.claimed_by IS NULL)"
        " EXECUTE FUNCTION test_slow_claim()",
    )


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_a_claim_and_a_prepare_of_one_batch_at_once_both_complete(engine: sa.Engine) -> None:
    # The web app wrote the batch with "queued" rows; a sensor run and a schedule run start at
    # once: one claims (first claim: the batch is still pending), the other prepares the batch.
    batch_id = insert_batch(engine, total_tasks=3)
    for index in range(3):
        insert_task(engine, batch_id, index, status="queued")
    _slow_claims(engine, "runner-a", 0.2)

    def prepare_a_moment_later() -> object:
        time.sleep(0.2)
        return prepare_batch(engine, batch_id)

    claimed, _prepared = run_together(
        [lambda: _claim(engine, batch_id, "runner-a"), prepare_a_moment_later]
    )

    assert [c.batch_index for c in claimed] == [0, 1, 2]  # type: ignore[union-attr]
    assert {t["status"] for t in tasks_of(engine, batch_id)} == {"pending"}
    assert _claimed_by(engine, batch_id) == ["runner-a"] * 3
    assert batch_row(engine, batch_id)["status"] == "running"
