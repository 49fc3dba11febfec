"""Settlement (SPEC 1): charge what succeeded, refund what failed, exactly once per
reservation, whatever re-runs or overlapping runs happen."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from grsai_pipeline.domain.lifecycle import Accepted, Answered, Rejected, SubmitFailed
from grsai_pipeline.domain.states import RemoteResult, RetryPolicy
from grsai_pipeline.errors import UnknownBatch
from grsai_pipeline.store.batches import get_batch
from grsai_pipeline.store.settlement import settle_batch
from grsai_pipeline.store.tasks import tasks_at_api
from grsai_pipeline_tests.helpers import (
    assert_ledger_invariants,
    ledger_kinds,
    new_batch,
    rows,
    table_snapshot,
)
from grsai_pipeline_tests.test_store.store_support import (
    INVALID_MODEL,
    SORA_10,
    SORA_15,
    VEO_FLASH,
    VEO_PRO,
    batch_row,
    claim,
    execute,
    fail,
    insert_task,
    ledger_of,
    money,
    record,
    run_together,
    set_task,
    sora,
    succeed,
    task_ids,
)


def _finished_batch(engine: sa.Engine) -> tuple[str, list[str]]:
    """Prices 10, 15, 20, 40 (reserved 85) and an invalid task; 200 credits granted.

    Index 0 and 2 succeeded, 1 failed with an error, 3 failed moderation, 4 invalid at creation.
    """
    batch_id = new_batch(engine, [SORA_10, SORA_15, VEO_FLASH, VEO_PRO, INVALID_MODEL], credits=200)
    ids = task_ids(engine, batch_id)
    succeed(engine, ids[0])
    fail(engine, ids[1], "error")
    succeed(engine, ids[2])
    fail(engine, ids[3], "input_moderation")
    return batch_id, ids


def _closes(engine: sa.Engine, batch_id: str) -> list[tuple[str, str, int, int]]:
    return sorted(e for e in ledger_of(engine, batch_id) if e[0] in ("charge", "refund"))


def test_settlement_charges_successes_and_refunds_failures(engine: sa.Engine) -> None:
    batch_id, ids = _finished_batch(engine)
    assert money(engine, "alice") == (115, 85)

    result = settle_batch(engine, batch_id)

    assert _closes(engine, batch_id) == sorted(
        [
            ("charge", ids[0], 1, 10),
            ("refund", ids[1], 1, 15),
            ("charge", ids[2], 1, 20),
            ("refund", ids[3], 1, 40),
        ]
    )
    assert ids[4] not in {e[1] for e in ledger_of(engine, batch_id)}
    batch = batch_row(engine, batch_id)
    assert batch["status"] == "settled"
    assert batch["settled_at"] is not None
    assert (batch["reserved_credits"], batch["charged_credits"], batch["refunded_credits"]) == (
        85,
        30,
        55,
    )
    assert (result.settled, result.unfinished, result.entries_written) == (True, 0, 4)
    assert (result.reserved_credits, result.charged_credits, result.refunded_credits) == (
        85,
        30,
        55,
    )
    assert money(engine, "alice") == (200 - 30, 0)
    view = get_batch(engine, batch_id)
    assert (view.status, view.charged_credits, view.refunded_credits) == ("settled", 30, 55)
    assert view.settled_at is not None
    assert_ledger_invariants(engine)


def test_settling_again_writes_nothing(engine: sa.Engine) -> None:
    batch_id, _ids = _finished_batch(engine)
    settle_batch(engine, batch_id)
    before = table_snapshot(engine)

    again = [settle_batch(engine, batch_id) for _ in range(3)]

    assert table_snapshot(engine) == before
    assert [(r.settled, r.entries_written) for r in again] == [(True, 0)] * 3
    assert [(r.charged_credits, r.refunded_credits) for r in again] == [(30, 55)] * 3


def test_a_batch_with_an_unfinished_task_is_not_settled(engine: sa.Engine) -> None:
    batch_id, ids = _finished_batch(engine)
    before_status = batch_row(engine, batch_id)["status"]

    for unfinished in ("pending", "queued", "processing"):
        set_task(engine, ids[2], status=unfinished, video_url=None, progress=50)
        before = table_snapshot(engine)

        result = settle_batch(engine, batch_id)

        assert (result.settled, result.unfinished, result.entries_written) == (False, 1, 0)
        assert table_snapshot(engine) == before
        assert batch_row(engine, batch_id)["status"] == before_status
        assert batch_row(engine, batch_id)["settled_at"] is None
    assert ledger_kinds(engine, batch_id) == {"reserve": 4}


def test_a_row_added_by_another_writer_holds_settlement_back(engine: sa.Engine) -> None:
    batch_id, _ids = _finished_batch(engine)
    insert_task(engine, batch_id, 5, status="queued")

    assert settle_batch(engine, batch_id).unfinished == 1
    assert ledger_kinds(engine, batch_id) == {"reserve": 4}


def test_a_batch_of_only_invalid_tasks_settles_with_nothing_to_close(engine: sa.Engine) -> None:
    batch_id = new_batch(engine, [INVALID_MODEL, {"prompt": "", "model": "veo-pro"}], credits=5)

    result = settle_batch(engine, batch_id)

    assert (result.settled, result.entries_written) == (True, 0)
    batch = batch_row(engine, batch_id)
    assert batch["status"] == "settled" and batch["settled_at"] is not None
    assert (batch["reserved_credits"], batch["charged_credits"], batch["refunded_credits"]) == (
        0,
        0,
        0,
    )
    assert ledger_kinds(engine, batch_id) == {}
    assert money(engine, "alice") == (5, 0)


def test_settle_an_unknown_batch_raises_unknown_batch(engine: sa.Engine) -> None:
    with pytest.raises(UnknownBatch):
        settle_batch(engine, "no-such-batch")


def test_settlement_after_the_tasks_ran_through_claims_and_answers(engine: sa.Engine) -> None:
    policy = RetryPolicy(max_task_retries=0)
    batch_id = new_batch(engine, [sora("a"), sora("b"), VEO_PRO, sora("d")], credits=100)
    a, b, c, d = claim(engine, batch_id, "runner")
    record(
        engine,
        "runner",
        [
            (a.state, Accepted("remote-a")),
            (b.state, Accepted("remote-b")),
            (c.state, Rejected("bad request")),
            (d.state, SubmitFailed("HTTP 502")),
        ],
        policy,
    )
    assert settle_batch(engine, batch_id).unfinished == 2
    with engine.connect() as conn:
        at_api = tasks_at_api(conn, task_ids(engine, batch_id))
    assert sorted(t.state.grsai_task_id or "" for t in at_api) == ["remote-a", "remote-b"]
    record(
        engine,
        None,
        [
            (
                task.state,
                Answered(
                    RemoteResult(
                        code=0,
                        msg="success",
                        status="succeeded",
                        video_url=f"https://cdn.example.com/{task.state.grsai_task_id}.mp4",
                    )
                ),
            )
            for task in at_api
        ],
        policy,
    )

    result = settle_batch(engine, batch_id)

    assert (result.settled, result.charged_credits, result.refunded_credits) == (True, 20, 50)
    assert ledger_kinds(engine, batch_id) == {"reserve": 4, "charge": 2, "refund": 2}
    assert money(engine, "alice") == (80, 0)
    assert_ledger_invariants(engine)


def test_a_reservation_another_writer_made_is_counted_on_the_settled_batch(
    engine: sa.Engine,
) -> None:
    # The web app adds a task and its reservation, but leaves the batch's columns as they were.
    batch_id = new_batch(engine, [SORA_10], credits=100)
    added = insert_task(engine, batch_id, 1, price=15)
    execute(
        engine,
        "INSERT INTO credit_ledger (user_id, batch_job_id, video_task_id, kind, amount,"
        " reservation, transaction_id, created_at)"
        " VALUES ('alice', :b, :t, 'reserve', 15, 1, 'web-app-1', CURRENT_TIMESTAMP)",
        b=batch_id,
        t=added,
    )
    execute(
        engine,
        "UPDATE credit_accounts SET balance = balance - 15, held = held + 15"
        " WHERE user_id = 'alice'",
    )
    assert batch_row(engine, batch_id)["reserved_credits"] == 10
    first, second = task_ids(engine, batch_id)
    succeed(engine, first)
    fail(engine, second, "error")

    result = settle_batch(engine, batch_id)

    assert (result.reserved_credits, result.charged_credits, result.refunded_credits) == (
        25, 10, 15,
    )  # fmt: skip
    batch = batch_row(engine, batch_id)
    assert (batch["reserved_credits"], batch["charged_credits"], batch["refunded_credits"]) == (
        25, 10, 15,
    )  # fmt: skip
    assert money(engine, "alice") == (90, 0)
    assert_ledger_invariants(engine)


def test_two_runners_settling_at_once_close_each_reservation_once(engine: sa.Engine) -> None:
    for round_number in range(10):
        user = f"user-{round_number}"
        batch_id = new_batch(engine, [sora("a"), VEO_FLASH, sora("c")], user=user, credits=100)
        ids = task_ids(engine, batch_id)
        succeed(engine, ids[0])
        fail(engine, ids[1])
        succeed(engine, ids[2])

        results = run_together([lambda b=batch_id: settle_batch(engine, b)] * 2)

        assert all(r.settled for r in results)
        assert sorted(r.entries_written for r in results) == [0, 3]
        closes = rows(
            engine,
            "SELECT video_task_id, COUNT(*) AS n FROM credit_ledger"
            " WHERE batch_job_id = :b AND kind IN ('charge', 'refund') GROUP BY video_task_id",
            b=batch_id,
        )
        assert sorted((r["video_task_id"], r["n"]) for r in closes) == sorted(
            (task_id, 1) for task_id in ids
        )
        assert money(engine, user) == (100 - 20, 0)
    assert_ledger_invariants(engine)
