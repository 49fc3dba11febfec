"""Cancelling a batch (SPEC 1): what was not sent fails with ``CANCELLED:`` and is refunded at
once in one transaction; what a live runner holds or the API has finishes as usual; nothing of
a cancelled batch is claimed, retried, or cancelled twice."""

from __future__ import annotations

import sqlalchemy as sa

from grsai_pipeline.domain.lifecycle import Accepted, Answered, NotSent, TaskState
from grsai_pipeline.domain.states import RemoteResult, RetryPolicy
from grsai_pipeline.store.cancels import cancel_batch, sweep_cancelled
from grsai_pipeline.store.retries import retry_failed_tasks
from grsai_pipeline.store.runners import Heartbeat
from grsai_pipeline.store.settlement import settle_batch
from grsai_pipeline_tests.helpers import assert_ledger_invariants, new_batch, rows, table_snapshot
from grsai_pipeline_tests.test_store.store_support import (
    LONG_LEASE,
    SORA_10,
    SORA_15,
    batch_row,
    claim,
    fail,
    money,
    record,
    register_stale_runner,
    tasks_of,
)


def refund_transactions(engine: sa.Engine, batch_id: str) -> list[str]:
    return [
        r["transaction_id"]
        for r in rows(
            engine,
            "SELECT DISTINCT transaction_id FROM credit_ledger"
            " WHERE batch_job_id = :b AND kind = 'refund'",
            b=batch_id,
        )
    ]


def test_a_batch_nobody_started_is_refunded_whole_in_one_transaction_and_settled(
    engine: sa.Engine,
) -> None:
    batch_id = new_batch(engine, [SORA_10, SORA_15, {"prompt": "", "model": "sora-2"}])
    assert money(engine, "alice") == (10_000 - 25, 25)

    done = cancel_batch(engine, batch_id, lease_s=LONG_LEASE)

    assert (done.unchanged, done.cancelled_tasks, done.refunded_credits) == (None, 2, 25)
    assert done.settled and done.still_running == 0
    tasks = tasks_of(engine, batch_id)
    assert [t["status"] for t in tasks] == ["failed"] * 3
    assert [t["error_message"].split(":")[0] for t in tasks] == [
        "CANCELLED", "CANCELLED", "INVALID_INPUT"
    ]  # fmt: skip
    assert len(refund_transactions(engine, batch_id)) == 1
    assert money(engine, "alice") == (10_000, 0)
    batch = batch_row(engine, batch_id)
    assert batch["status"] == "settled" and batch["cancelled_at"] is not None
    assert (batch["reserved_credits"], batch["refunded_credits"]) == (25, 25)
    assert_ledger_invariants(engine)


def test_tasks_at_the_api_or_on_the_wire_finish_and_settle_as_usual(engine: sa.Engine) -> None:
    batch_id = new_batch(engine, [SORA_10] * 4)
    with Heartbeat(engine, "runner-a", LONG_LEASE):
        at_api, on_wire, back = claim(engine, batch_id, "runner-a", 3)
        record(engine, "runner-a", [(at_api.state, Accepted("remote-1"))])

        done = cancel_batch(engine, batch_id, lease_s=LONG_LEASE)
        assert (done.cancelled_tasks, done.refunded_credits, done.still_running) == (1, 10, 3)
        assert not done.settled

        # The submit on the wire was accepted; the other one was not sent after all.
        record(engine, "runner-a", [(on_wire.state, Accepted("remote-2")),
                                    (back.state, NotSent())])  # fmt: skip
        assert claim(engine, batch_id, "runner-a") == [], "a cancelled batch is never claimed"
        assert sweep_cancelled(engine, [batch_id], lease_s=LONG_LEASE) == 1
    by_id = {t["id"]: t for t in tasks_of(engine, batch_id)}
    assert by_id[back.state.id]["error_message"].startswith("CANCELLED:")
    assert by_id[at_api.state.id]["status"] == by_id[on_wire.state.id]["status"] == "processing"
    answer = RemoteResult(0, "success", "succeeded", 100, video_url="https://v/1.mp4")
    for task, remote in ((at_api, "remote-1"), (on_wire, "remote-2")):
        row = by_id[task.state.id]
        current = TaskState(row["id"], row["status"], 1, remote, row["submitted_at"])
        record(engine, None, [(current, Answered(answer))])
    assert settle_batch(engine, batch_id).settled
    batch = batch_row(engine, batch_id)
    assert (batch["charged_credits"], batch["refunded_credits"]) == (20, 20)
    assert len(refund_transactions(engine, batch_id)) == 2  # the cancel, then the sweep
    assert money(engine, "alice") == (10_000 - 20, 0)
    assert_ledger_invariants(engine)


def test_a_dead_runners_claims_are_cancelled_like_unsent_tasks(engine: sa.Engine) -> None:
    batch_id = new_batch(engine, [SORA_10, SORA_10])
    register_stale_runner(engine, "runner-dead", silent_for_s=2 * LONG_LEASE)
    claim(engine, batch_id, "runner-dead", 2)

    done = cancel_batch(engine, batch_id, lease_s=LONG_LEASE)

    assert (done.cancelled_tasks, done.still_running, done.settled) == (2, 0, True)
    assert money(engine, "alice") == (10_000, 0)


def test_a_settled_or_cancelled_batch_is_left_as_it_is_and_never_retried(
    engine: sa.Engine,
) -> None:
    settled_id = new_batch(engine, [SORA_10])
    fail(engine, tasks_of(engine, settled_id)[0]["id"], kind="timed_out", message="TIMED_OUT: x")
    assert settle_batch(engine, settled_id).settled
    cancelled_id = new_batch(engine, [SORA_10])
    cancel_batch(engine, cancelled_id, lease_s=LONG_LEASE)
    before = table_snapshot(engine)

    again = cancel_batch(engine, cancelled_id, lease_s=LONG_LEASE)
    too_late = cancel_batch(engine, settled_id, lease_s=LONG_LEASE)

    assert again.unchanged is not None and "already cancelled" in again.unchanged
    assert too_late.unchanged is not None and "already settled" in too_late.unchanged
    assert retry_failed_tasks(engine, cancelled_id, RetryPolicy()).retried == 0
    assert table_snapshot(engine) == before
    # The settled batch's timed-out task is still retried by a backfill, as before.
    assert retry_failed_tasks(engine, settled_id, RetryPolicy()).retried == 1
