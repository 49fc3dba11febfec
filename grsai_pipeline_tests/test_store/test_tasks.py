"""Task rows as the engine sees them (SPEC 1-3, 7): which runner submits which task, what each
submit and each answer about a remote task writes, and what the guards keep a late, stray or
second writer from touching."""

from __future__ import annotations

import time
from contextlib import ExitStack
from datetime import timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from grsai_pipeline.domain.lifecycle import (
    Accepted,
    Answered,
    Event,
    FoundInvalid,
    NotSent,
    Rejected,
    SubmitFailed,
    TaskState,
    decide,
)
from grsai_pipeline.domain.pricing import PriceTable
from grsai_pipeline.domain.states import RemoteResult, RetryPolicy
from grsai_pipeline.store.columns import utc_now
from grsai_pipeline.store.intake import take_in_batch
from grsai_pipeline.store.retries import retry_failed_tasks
from grsai_pipeline.store.runners import Heartbeat
from grsai_pipeline.store.settlement import settle_batch
from grsai_pipeline.store.tasks import (
    ClaimedTask,
    RemoteTask,
    apply_transitions,
    claim_waiting_tasks,
    release_claims_not_held,
    task_for_callback,
    tasks_at_api,
    unfinished_per_batch,
    waiting_per_batch,
)
from grsai_pipeline_tests.helpers import (
    assert_ledger_invariants,
    grant_credits,
    new_batch,
    table_snapshot,
)
from grsai_pipeline_tests.test_store.store_support import (
    LONG_LEASE,
    POLICY,
    SORA_10,
    VEO_PRO,
    batch_row,
    claim,
    execute,
    insert_batch,
    insert_task,
    ledger_of,
    money,
    record,
    register_stale_runner,
    reserve_as_other_writer,
    run_together,
    set_task,
    sora,
    succeed,
    task_ids,
    task_row,
    tasks_of,
)

VIDEO = "https://cdn.example.com/video.mp4"


def _batch(engine: sa.Engine, n: int) -> str:
    return new_batch(engine, [sora(f"task {i}") for i in range(n)])


def _ids(claimed: list[ClaimedTask]) -> list[str]:
    return [c.state.id for c in claimed]


def _claimed_by(engine: sa.Engine, batch_id: str) -> list[str | None]:
    return [t["claimed_by"] for t in tasks_of(engine, batch_id)]


def _take_in(engine: sa.Engine, batch_id: str) -> None:
    """What an engine's rescan does first: take in the rows other writers stored."""
    take_in_batch(engine, batch_id, PriceTable())


# --- claims --------------------------------------------------------------------------------


def test_claims_at_most_the_quota_lowest_index_first_and_marks_the_batch_running(
    engine: sa.Engine,
) -> None:
    batch_id = _batch(engine, 5)
    assert batch_row(engine, batch_id)["status"] == "pending"

    claimed = claim(engine, batch_id, "runner-a", 3)

    assert _ids(claimed) == task_ids(engine, batch_id)[:3]
    assert [c.spec.prompt for c in claimed if c.spec] == ["task 0", "task 1", "task 2"]
    assert all(c.invalid_reason is None and not c.reclaimed for c in claimed)
    assert all(c.batch_job_id == batch_id and c.state.attempts == 0 for c in claimed)
    assert _claimed_by(engine, batch_id) == ["runner-a"] * 3 + [None, None]
    assert all(t["claimed_at"] is not None for t in tasks_of(engine, batch_id)[:3])
    assert {t["status"] for t in tasks_of(engine, batch_id)} == {"pending"}
    assert batch_row(engine, batch_id)["status"] == "running"


def test_claims_follow_batch_index_not_the_order_rows_were_written(engine: sa.Engine) -> None:
    grant_credits(engine, "alice", 100)
    batch_id = insert_batch(engine, total_tasks=5)
    for index in (4, 2, 0, 3, 1):
        insert_task(engine, batch_id, index, prompt=f"index {index}")
    _take_in(engine, batch_id)

    claimed = claim(engine, batch_id, "runner-a", 3)

    assert _ids(claimed) == task_ids(engine, batch_id)[:3]
    assert [c.spec.prompt for c in claimed if c.spec] == ["index 0", "index 1", "index 2"]


def test_each_batch_gives_at_most_its_own_quota(engine: sa.Engine) -> None:
    first, second, third = _batch(engine, 3), _batch(engine, 3), _batch(engine, 3)

    with engine.begin() as conn:
        claimed = claim_waiting_tasks(
            conn, "runner-a", [(first, 2), (second, 1), (third, 0)], lease_s=300, now=utc_now()
        )

    assert sorted(_ids(claimed)) == sorted(
        task_ids(engine, first)[:2] + task_ids(engine, second)[:1]
    )
    assert [batch_row(engine, b)["status"] for b in (first, second, third)] == [
        "running", "running", "pending",
    ]  # fmt: skip
    assert _claimed_by(engine, third) == [None] * 3


def test_only_pending_tasks_are_claimed_and_queued_ones_once_taken_as_pending(
    engine: sa.Engine,
) -> None:
    batch_id = _batch(engine, 4)
    ids = task_ids(engine, batch_id)
    set_task(engine, ids[0], status="processing", grsai_task_id="g-0")
    set_task(engine, ids[1], status="succeeded", video_url="https://v/1.mp4")
    set_task(engine, ids[2], status="queued")

    with Heartbeat(engine, "runner-a", 300):
        assert _ids(claim(engine, batch_id, "runner-a")) == [ids[3]]

        _take_in(engine, batch_id)
        assert task_row(engine, ids[2])["status"] == "pending"
        assert _ids(claim(engine, batch_id, "runner-b")) == [ids[2]]


def test_rows_another_writer_added_are_claimed_only_once_taken_in_and_paid_for(
    engine: sa.Engine,
) -> None:
    batch_id, other = new_batch(engine, [SORA_10]), new_batch(engine, [SORA_10])
    queued = insert_task(engine, batch_id, 1, status="queued")
    elsewhere = insert_task(engine, other, 1, status="queued")
    first = task_ids(engine, batch_id)[0]
    with Heartbeat(engine, "runner-a", LONG_LEASE):
        assert _ids(claim(engine, batch_id, "runner-a")) == [first]  # not the unpriced row

        _take_in(engine, batch_id)

        row = task_row(engine, queued)
        assert (row["status"], row["price"]) == ("pending", 10)
        assert ("reserve", queued, 1, 10) in ledger_of(engine, batch_id)
        assert task_row(engine, elsewhere)["status"] == "queued"
        assert _ids(claim(engine, batch_id, "runner-a")) == [queued]
    before = table_snapshot(engine)
    _take_in(engine, batch_id)
    assert table_snapshot(engine) == before
    assert_ledger_invariants(engine)


def test_a_live_runner_keeps_its_claims(engine: sa.Engine) -> None:
    batch_id = _batch(engine, 4)
    with Heartbeat(engine, "runner-a", 300), Heartbeat(engine, "runner-b", 300):
        first = claim(engine, batch_id, "runner-a", 2)

        second = claim(engine, batch_id, "runner-b")
        third = claim(engine, batch_id, "runner-c")

    ids = task_ids(engine, batch_id)
    assert (_ids(first), _ids(second), third) == (ids[:2], ids[2:], [])
    assert _claimed_by(engine, batch_id) == ["runner-a", "runner-a", "runner-b", "runner-b"]
    assert [t["possible_duplicates"] for t in tasks_of(engine, batch_id)] == [0] * 4


def test_claims_a_runner_never_learnt_of_are_released_for_anyone_as_never_sent(
    engine: sa.Engine,
) -> None:
    """A claim that committed on a cut connection (issue 26): its live runner releases what it
    does not hold, keeps what it holds, and the released tasks are claimed again as fresh."""
    batch_id = _batch(engine, 3)
    with Heartbeat(engine, "runner-a", 300), Heartbeat(engine, "runner-b", 300):
        held = _ids(claim(engine, batch_id, "runner-a", 3))[:1]
        with engine.begin() as conn:
            released = release_claims_not_held(conn, "runner-a", set(held), utc_now())
        assert released == 2
        again = claim(engine, batch_id, "runner-b")

    ids = task_ids(engine, batch_id)
    assert _ids(again) == ids[1:] and not any(c.reclaimed for c in again)
    assert _claimed_by(engine, batch_id) == ["runner-a", "runner-b", "runner-b"]
    assert [t["possible_duplicates"] for t in tasks_of(engine, batch_id)] == [0] * 3


def test_a_runner_that_keeps_beating_keeps_its_claims_past_the_lease(engine: sa.Engine) -> None:
    batch_id = _batch(engine, 2)
    lease_s = 0.4
    with Heartbeat(engine, "runner-a", lease_s) as beat:
        claim(engine, batch_id, "runner-a", lease_s=lease_s)
        time.sleep(3 * lease_s)  # far past the lease since the claim: the heartbeat holds it

        assert beat.fresh
        assert claim(engine, batch_id, "runner-b", lease_s=lease_s) == []
    # Gone (its row deleted on the way out): the claims are free to take.
    taken = claim(engine, batch_id, "runner-b", lease_s=lease_s)

    assert _ids(taken) == task_ids(engine, batch_id)
    assert _claimed_by(engine, batch_id) == ["runner-b", "runner-b"]


def test_claims_of_a_runner_that_never_registered_are_taken_over_as_possible_duplicates(
    engine: sa.Engine,
) -> None:
    batch_id = _batch(engine, 3)
    claim(engine, batch_id, "unregistered", 2)

    with Heartbeat(engine, "runner-b", 300):
        taken = claim(engine, batch_id, "runner-b")

    assert _ids(taken) == task_ids(engine, batch_id)
    assert [c.reclaimed for c in taken] == [True, True, False]
    assert _claimed_by(engine, batch_id) == ["runner-b"] * 3
    assert [t["possible_duplicates"] for t in tasks_of(engine, batch_id)] == [1, 1, 0]


def test_claims_of_a_runner_whose_heartbeat_went_stale_are_taken_over(engine: sa.Engine) -> None:
    batch_id = _batch(engine, 4)
    ids = task_ids(engine, batch_id)
    register_stale_runner(engine, "runner-dead", silent_for_s=2 * 300)
    with Heartbeat(engine, "runner-live", 300):
        claim(engine, batch_id, "runner-live", 2)
        claim(engine, batch_id, "runner-dead", 2)

        taken = claim(engine, batch_id, "runner-b")

        assert _ids(taken) == ids[2:]
        assert all(c.reclaimed for c in taken)
        assert _claimed_by(engine, batch_id) == ["runner-live"] * 2 + ["runner-b"] * 2
    # The same silence inside a longer lease is not stale yet.
    register_stale_runner(engine, "runner-slow", silent_for_s=60)
    other = _batch(engine, 1)
    claim(engine, other, "runner-slow")
    assert claim(engine, other, "runner-c") == []


def test_runners_claiming_at_once_never_share_a_task(engine: sa.Engine) -> None:
    batch_id = _batch(engine, 24)
    runners = [f"runner-{i}" for i in range(4)]

    with ExitStack() as stack:
        for runner in runners:
            stack.enter_context(Heartbeat(engine, runner, 300))
        batches = run_together(
            [lambda r=r: claim(engine, batch_id, r, 8) for r in runners]  # type: ignore[misc]
        )

    claimed_ids = [c.state.id for claims in batches for c in claims]
    assert len(claimed_ids) == len(set(claimed_ids)) == 24
    by_runner = {r: set(_ids(claims)) for r, claims in zip(runners, batches, strict=True)}
    for task in tasks_of(engine, batch_id):
        assert task["id"] in by_runner[task["claimed_by"]]
        assert task["possible_duplicates"] == 0


def test_a_row_another_writer_stored_invalidly_is_claimed_with_its_reason(
    engine: sa.Engine,
) -> None:
    batch_id = _batch(engine, 1)
    insert_task(engine, batch_id, 1, model="sora-3")
    insert_task(engine, batch_id, 2, prompt="   ")
    # As if taken in (free) before they broke a rule: claims check every row again.
    execute(engine, "UPDATE video_tasks SET priced_at = created_at WHERE priced_at IS NULL")

    claimed = claim(engine, batch_id, "runner-a")

    assert _ids(claimed) == task_ids(engine, batch_id)
    assert claimed[0].spec is not None and claimed[0].invalid_reason is None
    for bad, field in zip(claimed[1:], ["model", "prompt"], strict=True):
        assert bad.spec is None
        assert bad.invalid_reason is not None
        assert bad.invalid_reason.startswith("INVALID_INPUT:")
        assert field in bad.invalid_reason


def test_an_invalid_row_another_writer_reserved_fails_at_intake_and_is_refunded(
    engine: sa.Engine,
) -> None:
    batch_id = new_batch(engine, [SORA_10], credits=100)
    bad = insert_task(engine, batch_id, 1, status="queued", model="veo-ultra", price=20)
    reserve_as_other_writer(engine, user_id="alice", batch_id=batch_id, task_id=bad, amount=20)
    assert money(engine, "alice") == (70, 30)
    assert_ledger_invariants(engine)

    _take_in(engine, batch_id)

    row = task_row(engine, bad)
    assert (row["status"], row["failure_kind"], row["attempts"]) == ("failed", "invalid_input", 0)
    assert row["error_message"].startswith("INVALID_INPUT:") and "model" in row["error_message"]
    (good,) = claim(engine, batch_id, "runner-a")
    record(engine, "runner-a", [(good.state, Accepted("r-0"))])
    succeed(engine, good.state.id)
    result = settle_batch(engine, batch_id)

    assert (result.settled, result.charged_credits, result.refunded_credits) == (True, 10, 20)
    assert ("refund", bad, 1, 20) in ledger_of(engine, batch_id)
    assert money(engine, "alice") == (90, 0)
    assert_ledger_invariants(engine)
    # An invalid failure is never retried by a later run.
    before = table_snapshot(engine)
    assert retry_failed_tasks(engine, batch_id, RetryPolicy()).retried == 0
    assert table_snapshot(engine) == before


def test_a_priced_row_made_invalid_afterwards_fails_when_claimed(engine: sa.Engine) -> None:
    batch_id = new_batch(engine, [SORA_10, SORA_10], credits=100)
    good_id, bad_id = task_ids(engine, batch_id)
    set_task(engine, bad_id, model="veo-ultra")
    good, invalid = claim(engine, batch_id, "runner-a")
    assert invalid.state.id == bad_id and invalid.spec is None and invalid.invalid_reason

    written = record(
        engine,
        "runner-a",
        [(invalid.state, FoundInvalid(invalid.invalid_reason)), (good.state, Accepted("r-0"))],
    )

    assert written == 2
    row = task_row(engine, bad_id)
    assert (row["status"], row["failure_kind"]) == ("failed", "invalid_input")
    assert (row["grsai_task_id"], row["claimed_by"]) == (None, None)
    assert task_row(engine, good_id)["status"] == "processing"


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
def test_a_claim_and_a_rescan_of_one_batch_at_once_both_complete(engine: sa.Engine) -> None:
    # The web app wrote three rows, taken in already, then three more as "queued"; one runner
    # claims (first claim: the batch is still pending) while another's rescan takes the new
    # rows in (reserving them under the batch's lock).
    grant_credits(engine, "alice", 100)
    batch_id = insert_batch(engine, total_tasks=6)
    for index in range(3):
        insert_task(engine, batch_id, index)
    _take_in(engine, batch_id)
    for index in range(3, 6):
        insert_task(engine, batch_id, index, status="queued")
    ids = task_ids(engine, batch_id)
    _slow_claims(engine, "runner-a", 0.2)

    def rescan_a_moment_later() -> None:
        time.sleep(0.2)
        _take_in(engine, batch_id)

    with Heartbeat(engine, "runner-a", 300):
        claimed, _ = run_together(
            [lambda: claim(engine, batch_id, "runner-a"), rescan_a_moment_later]
        )

        assert _ids(claimed) == ids[:3]  # type: ignore[arg-type]
        assert {t["status"] for t in tasks_of(engine, batch_id)} == {"pending"}
        assert _claimed_by(engine, batch_id) == ["runner-a"] * 3 + [None] * 3
        assert batch_row(engine, batch_id)["status"] == "running"
        assert _ids(claim(engine, batch_id, "runner-b")) == ids[3:]
        assert money(engine, "alice") == (40, 60)


# --- what a submit came to -----------------------------------------------------------------


def test_an_accepted_submit_makes_the_task_processing(engine: sa.Engine) -> None:
    batch_id = _batch(engine, 2)
    first, second = claim(engine, batch_id, "runner-a")

    assert record(engine, "runner-a", [(first.state, Accepted("remote-1"))]) == 1

    task = task_row(engine, first.state.id)
    assert task["status"] == "processing"
    assert task["grsai_task_id"] == "remote-1"
    assert task["attempts"] == 1
    assert task["submitted_at"] is not None
    assert (task["claimed_by"], task["claimed_at"]) == (None, None)
    # The other claim is untouched.
    assert task_row(engine, second.state.id)["claimed_by"] == "runner-a"


def test_a_rejected_submit_fails_the_task_as_an_api_error(engine: sa.Engine) -> None:
    batch_id = _batch(engine, 1)
    (task,) = claim(engine, batch_id, "runner-a")

    assert record(engine, "runner-a", [(task.state, Rejected("prompt violates policy"))]) == 1

    row = task_row(engine, task.state.id)
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
        (task,) = claim(engine, batch_id, "runner-a")
        record(engine, "runner-a", [(task.state, SubmitFailed("HTTP 503"))])
        row = task_row(engine, task.state.id)
        statuses.append(row["status"])
        attempts.append(row["attempts"])
        assert row["error_message"] == "SUBMIT_FAILED: HTTP 503"
        assert row["failure_kind"] == "submit_exhausted"
        assert row["claimed_by"] is None

    assert statuses == ["pending", "pending", "failed"]
    assert attempts == [1, 2, 3]
    assert claim(engine, batch_id, "runner-a") == []


def test_a_task_not_sent_is_untouched_except_its_claim(engine: sa.Engine) -> None:
    batch_id = _batch(engine, 1)
    (task,) = claim(engine, batch_id, "runner-a")
    before = task_row(engine, task.state.id)

    assert record(engine, "runner-a", [(task.state, NotSent())]) == 1

    after = task_row(engine, task.state.id)
    assert (after["claimed_by"], after["claimed_at"]) == (None, None)
    ignored = {"claimed_by", "claimed_at", "updated_at"}
    assert {k: v for k, v in after.items() if k not in ignored} == {
        k: v for k, v in before.items() if k not in ignored
    }
    # Released, not abandoned: the next claim is no possible duplicate.
    (again,) = claim(engine, batch_id, "runner-b")
    assert again.state.id == task.state.id and not again.reclaimed
    assert task_row(engine, task.state.id)["possible_duplicates"] == 0


def test_outcomes_of_one_runner_are_written_together(engine: sa.Engine) -> None:
    batch_id = new_batch(engine, [sora("a"), VEO_PRO, sora("c"), sora("d")])
    a, b, c, d = claim(engine, batch_id, "runner-a")

    written = record(
        engine,
        "runner-a",
        [
            (a.state, Accepted("remote-a")),
            (b.state, Rejected("bad request")),
            (c.state, SubmitFailed("timeout")),
            (d.state, NotSent()),
        ],
    )

    assert written == 4
    assert [t["status"] for t in tasks_of(engine, batch_id)] == [
        "processing", "failed", "pending", "pending",
    ]  # fmt: skip
    assert [t["grsai_task_id"] for t in tasks_of(engine, batch_id)] == [
        "remote-a", None, None, None,
    ]  # fmt: skip
    assert [t["attempts"] for t in tasks_of(engine, batch_id)] == [1, 1, 1, 0]
    assert _claimed_by(engine, batch_id) == [None] * 4


def test_lost_answers_and_takeovers_count_as_possible_duplicates(engine: sa.Engine) -> None:
    batch_id = _batch(engine, 3)
    claim(engine, batch_id, "unregistered", 1)
    a, b, c = claim(engine, batch_id, "runner-b")

    record(
        engine,
        "runner-b",
        [
            (a.state, Accepted("remote-a", uncertain_tries=2)),
            (b.state, SubmitFailed("HTTP 502", uncertain_tries=1)),
            (c.state, Rejected("bad request")),
        ],
    )

    # Task a: taken over (1) and two tries whose answers were lost (2).
    assert [t["possible_duplicates"] for t in tasks_of(engine, batch_id)] == [3, 1, 0]


def _lost_claims(engine: sa.Engine, n: int) -> tuple[list[ClaimedTask], list[ClaimedTask]]:
    """Runner a (whose heartbeat went stale) claims n tasks, and runner b takes them over."""
    batch_id = _batch(engine, n)
    register_stale_runner(engine, "runner-a", silent_for_s=600)
    stale = claim(engine, batch_id, "runner-a")
    taken = claim(engine, batch_id, "runner-b")
    assert _ids(taken) == _ids(stale)
    return stale, taken


def test_an_outcome_for_a_claim_this_runner_lost_changes_nothing(engine: sa.Engine) -> None:
    stale, taken = _lost_claims(engine, 4)
    before = table_snapshot(engine)

    written = record(
        engine,
        "runner-a",
        [
            (stale[0].state, Accepted("remote-late")),
            (stale[1].state, Rejected("late rejection")),
            (stale[2].state, SubmitFailed("late timeout", uncertain_tries=3)),
            (stale[3].state, NotSent()),
        ],
    )

    assert written == 0
    assert table_snapshot(engine) == before
    # The runner that holds the claims still records its own outcomes.
    outcomes: list[tuple[TaskState, Event]] = [
        (t.state, Accepted(f"remote-b{i}")) for i, t in enumerate(taken)
    ]
    assert record(engine, "runner-b", outcomes) == 4
    after = [task_row(engine, t.state.id) for t in taken]
    assert [(r["status"], r["grsai_task_id"], r["claimed_by"]) for r in after] == [
        ("processing", f"remote-b{i}", None) for i in range(4)
    ]


def test_outcomes_written_together_skip_and_do_not_count_the_claims_this_runner_lost(
    engine: sa.Engine,
) -> None:
    stale, taken = _lost_claims(engine, 3)
    batch_id = _batch(engine, 3)
    mine = claim(engine, batch_id, "runner-a")
    # One statement for all six (same kind of outcome): only runner a's own three are written.
    outcomes: list[tuple[TaskState, Event]] = [
        (t.state, Accepted(f"remote-{i}")) for i, t in enumerate(stale + mine)
    ]

    assert record(engine, "runner-a", outcomes) == 3
    assert [task_row(engine, t.state.id)["claimed_by"] for t in taken] == ["runner-b"] * 3
    assert [t["grsai_task_id"] for t in tasks_of(engine, batch_id)] == [
        "remote-3", "remote-4", "remote-5",
    ]  # fmt: skip


def test_an_outcome_for_a_task_no_longer_waiting_changes_nothing(engine: sa.Engine) -> None:
    batch_id = _batch(engine, 1)
    (task,) = claim(engine, batch_id, "runner-a")
    # Meanwhile an operator finished the task by hand (claim still recorded on the row).
    set_task(engine, task.state.id, status="succeeded", video_url=VIDEO, progress=100)
    before = table_snapshot(engine)

    assert record(engine, "runner-a", [(task.state, Rejected("too late to matter"))]) == 0
    assert table_snapshot(engine) == before


# --- tasks at the API and what an answer writes --------------------------------------------


def _at_api(engine: sa.Engine, task_ids_: list[str]) -> list[RemoteTask]:
    """The tasks still at the API, in the order of ``task_ids_``."""
    with engine.connect() as conn:
        found = {t.state.id: t for t in tasks_at_api(conn, task_ids_)}
    return [found[i] for i in task_ids_ if i in found]


def _submitted(engine: sa.Engine, tasks: list[dict[str, Any]]) -> tuple[str, list[RemoteTask]]:
    """A batch whose tasks were all accepted by the API as ``remote-<index>``."""
    batch_id = new_batch(engine, tasks)
    claimed = claim(engine, batch_id, "runner")
    record(engine, "runner", [(c.state, Accepted(f"remote-{i}")) for i, c in enumerate(claimed)])
    return batch_id, _at_api(engine, task_ids(engine, batch_id))


def _answer(engine: sa.Engine, pairs: list[tuple[RemoteTask, RemoteResult]]) -> int:
    """Judge each answer against the task as it was read, and write what it decided."""
    return record(engine, None, [(task.state, Answered(result)) for task, result in pairs])


def _succeeded(url: str = VIDEO) -> RemoteResult:
    return RemoteResult(code=0, msg="success", status="succeeded", progress=100, video_url=url)


def _running(progress: int) -> RemoteResult:
    return RemoteResult(code=0, msg="success", status="running", progress=progress)


def _failed(reason: str, error: str) -> RemoteResult:
    return RemoteResult(code=0, msg="success", status="failed", failure_reason=reason, error=error)


def test_tasks_at_api_lists_those_still_waiting_on_the_api(engine: sa.Engine) -> None:
    batch_id, targets = _submitted(engine, [sora("a"), VEO_PRO, sora("c")])
    other_batch, (elsewhere,) = _submitted(engine, [sora("elsewhere")])
    ids = task_ids(engine, batch_id)
    set_task(engine, ids[2], status="succeeded", video_url=VIDEO, progress=100)

    listed = _at_api(engine, [*ids, "no-such-task"])

    assert [(t.state.id, t.state.grsai_task_id, t.is_sora, t.state.attempts) for t in listed] == [
        (ids[0], "remote-0", True, 1),
        (ids[1], "remote-1", False, 1),
    ]
    assert all(t.state.submitted_at is not None and t.batch_job_id == batch_id for t in listed)
    assert len(targets) == 3
    assert {t.state.id for t in _at_api(engine, [elsewhere.state.id])} == {elsewhere.state.id}
    assert other_batch != batch_id


def test_a_callback_finds_its_task_whatever_its_status(engine: sa.Engine) -> None:
    batch_id, (target,) = _submitted(engine, [sora()])
    succeed(engine, target.state.id)

    with engine.connect() as conn:
        found = task_for_callback(conn, target.state.id)
        missing = task_for_callback(conn, "no-such-task")

    assert found is not None and missing is None
    assert (found.state.status, found.batch_job_id, found.is_sora) == ("succeeded", batch_id, True)


def test_a_success_stores_the_video_and_full_progress(engine: sa.Engine) -> None:
    _batch_id, (target,) = _submitted(engine, [sora()])

    assert _answer(engine, [(target, _succeeded())]) == 1

    row = task_row(engine, target.state.id)
    assert (row["status"], row["video_url"], row["progress"]) == ("succeeded", VIDEO, 100)
    assert row["error_message"] is None


def test_progress_is_stored_while_running_and_an_unchanged_answer_writes_nothing(
    engine: sa.Engine,
) -> None:
    _batch_id, (target,) = _submitted(engine, [sora()])

    assert _answer(engine, [(target, _running(40))]) == 1
    assert task_row(engine, target.state.id)["progress"] == 40
    (again,) = _at_api(engine, [target.state.id])
    before = table_snapshot(engine)

    assert decide(again.state, Answered(_running(40)), now=utc_now(), policy=POLICY) is None
    assert _answer(engine, [(again, _running(40))]) == 0
    assert table_snapshot(engine) == before


def test_a_failure_stores_its_message_and_kind(engine: sa.Engine) -> None:
    _batch_id, (target,) = _submitted(engine, [sora()])

    _answer(engine, [(target, _failed("input_moderation", "nsfw"))])

    row = task_row(engine, target.state.id)
    assert row["status"] == "failed"
    assert row["failure_kind"] == "input_moderation"
    assert "input_moderation" in row["error_message"] and "nsfw" in row["error_message"]
    assert row["video_url"] is None
    assert row["grsai_task_id"] == "remote-0"


def test_a_generation_error_with_attempts_left_goes_back_to_pending(engine: sa.Engine) -> None:
    _batch_id, (target,) = _submitted(engine, [sora()])

    _answer(engine, [(target, _failed("error", "gpu"))])

    row = task_row(engine, target.state.id)
    assert (row["status"], row["grsai_task_id"], row["progress"]) == ("pending", None, 0)
    assert row["attempts"] == 1
    assert row["error_message"] == "error: gpu"
    assert row["failure_kind"] == "error"


def test_a_late_answer_never_moves_a_final_task_back(engine: sa.Engine) -> None:
    _batch_id, (won, lost) = _submitted(engine, [sora("a"), sora("b")])
    _answer(engine, [(won, _succeeded()), (lost, _failed("output_moderation", "x"))])
    before = table_snapshot(engine)

    late = [
        _running(55),
        _failed("input_moderation", "late"),
        _succeeded("https://cdn.example.com/other"),
        _failed("error", "late gpu"),
    ]
    for result in late:
        # Judged on the task as it was before it ended (a poll that was on the wire).
        assert _answer(engine, [(won, result), (lost, result)]) == 0

    assert table_snapshot(engine) == before
    with engine.connect() as conn:
        now_won = task_for_callback(conn, won.state.id)
    assert now_won is not None and now_won.state.status == "succeeded"
    # Judged on the task as it is now, nothing is even decided.
    assert all(
        decide(now_won.state, Answered(r), now=utc_now(), policy=POLICY) is None for r in late
    )
    assert task_row(engine, won.state.id)["video_url"] == VIDEO
    assert task_row(engine, lost.state.id)["status"] == "failed"


def test_an_answer_about_an_older_remote_task_does_nothing(engine: sa.Engine) -> None:
    _batch_id, (old,) = _submitted(engine, [sora()])
    # The task was resubmitted since: it is processing again under a new remote id.
    set_task(engine, old.state.id, grsai_task_id="remote-new", progress=10)
    before = table_snapshot(engine)

    for result in (_succeeded(), _failed("output_moderation", "old"), _running(90)):
        assert _answer(engine, [(old, result)]) == 0

    assert table_snapshot(engine) == before
    (current,) = _at_api(engine, [old.state.id])
    assert current.state.grsai_task_id == "remote-new"
    assert _answer(engine, [(current, _succeeded())]) == 1
    assert task_row(engine, old.state.id)["status"] == "succeeded"


def test_the_not_found_clock_is_stored_then_cleared_or_run_out(engine: sa.Engine) -> None:
    _batch_id, (back, gone) = _submitted(engine, [sora("a"), sora("b")])
    since = utc_now() - timedelta(seconds=5)
    not_found = Answered(RemoteResult(code=-22, msg="task not found"))
    start = [decide(t.state, not_found, now=since, policy=POLICY) for t in (back, gone)]
    with engine.begin() as conn:
        apply_transitions(conn, [t for t in start if t], runner_id=None, now=since)

    unknown = _at_api(engine, [back.state.id, gone.state.id])
    for task in unknown:
        assert task.state.not_found_since is not None
        assert abs((task.state.not_found_since - since).total_seconds()) < 0.001
        assert task.state.status == "processing"

    # One is known again; the other stays unknown past the grace period.
    later = since + timedelta(seconds=POLICY.not_found_grace_s + 1)
    known_again = decide(unknown[0].state, Answered(_running(20)), now=later, policy=POLICY)
    run_out = decide(unknown[1].state, not_found, now=later, policy=POLICY)
    assert known_again is not None and run_out is not None
    with engine.begin() as conn:
        assert apply_transitions(conn, [known_again, run_out], runner_id=None, now=later) == 2

    row = task_row(engine, back.state.id)
    assert (row["status"], row["progress"], row["not_found_since"]) == ("processing", 20, None)
    row = task_row(engine, gone.state.id)
    assert (row["status"], row["failure_kind"], row["not_found_since"]) == (
        "failed", "not_found", None,
    )  # fmt: skip
    assert row["error_message"].startswith("TASK_NOT_FOUND:")


def test_a_submit_and_an_answer_to_it_written_together_apply_in_order(engine: sa.Engine) -> None:
    batch_id = _batch(engine, 1)
    (task,) = claim(engine, batch_id, "runner-a")
    now = utc_now()
    accepted = decide(task.state, Accepted("remote-1"), now=now, policy=POLICY)
    assert accepted is not None
    done = decide(task.state.after(accepted), Answered(_succeeded()), now=now, policy=POLICY)
    assert done is not None

    with engine.begin() as conn:
        assert apply_transitions(conn, [accepted, done], runner_id="runner-a", now=now) == 2

    row = task_row(engine, task.state.id)
    assert (row["status"], row["grsai_task_id"], row["video_url"]) == (
        "succeeded", "remote-1", VIDEO,
    )  # fmt: skip
    assert (row["attempts"], row["claimed_by"]) == (1, None)


# --- counts per batch ----------------------------------------------------------------------


def test_waiting_and_unfinished_tasks_are_counted_per_batch(engine: sa.Engine) -> None:
    mixed = _batch(engine, 4)
    ids = task_ids(engine, mixed)
    set_task(engine, ids[1], status="processing", grsai_task_id="g-1")
    succeed(engine, ids[2])
    set_task(engine, ids[3], status="failed", failure_kind="error", error_message="boom")
    insert_task(engine, mixed, 4, status="queued")  # waits, but is not claimable: unpriced
    fresh = _batch(engine, 2)
    done = _batch(engine, 1)
    succeed(engine, task_ids(engine, done)[0])

    with engine.connect() as conn:
        assert waiting_per_batch(conn, [mixed], LONG_LEASE, utc_now()) == {mixed: (1, 2)}
        everywhere = waiting_per_batch(conn, None, LONG_LEASE, utc_now())
        assert everywhere == {mixed: (1, 2), fresh: (2, 2)}
        assert unfinished_per_batch(conn, [mixed, done]) == {mixed: 3}
        assert unfinished_per_batch(conn, None) == {mixed: 3, fresh: 2}


def test_tasks_a_live_runner_holds_are_not_counted_as_waiting(engine: sa.Engine) -> None:
    batch_id = _batch(engine, 3)
    with Heartbeat(engine, "runner-live", LONG_LEASE):
        claim(engine, batch_id, "runner-live", 2)
        with engine.connect() as conn:
            assert waiting_per_batch(conn, [batch_id], LONG_LEASE, utc_now()) == {batch_id: (1, 1)}
    # Gone (no heartbeat row): its claims may be taken over, so they wait again.
    with engine.connect() as conn:
        assert waiting_per_batch(conn, [batch_id], LONG_LEASE, utc_now()) == {batch_id: (3, 3)}
