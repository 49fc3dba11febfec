"""Retries by backfill (SPEC 1, 4): a settled batch retries its retryable failures, each with a
new reservation, as far as the balance covers them. (Rows other writers leave, queued or
invalid, are the claim's business: see test_tasks.py.)"""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from grsai_pipeline.domain.pricing import PriceTable
from grsai_pipeline.domain.states import RetryPolicy
from grsai_pipeline.errors import UnknownBatch
from grsai_pipeline.store.accounts import grant_credits
from grsai_pipeline.store.batches import create_batch
from grsai_pipeline.store.retries import batches_to_retry, retry_failed_tasks
from grsai_pipeline.store.settlement import settle_batch
from grsai_pipeline_tests.helpers import (
    assert_ledger_invariants,
    ledger_kinds,
    new_batch,
    table_snapshot,
)
from grsai_pipeline_tests.test_store.store_support import (
    INVALID_MODEL,
    SORA_10,
    SORA_15,
    VEO_FLASH,
    VEO_PRO,
    batch_row,
    fail,
    ledger_count,
    ledger_of,
    money,
    run_together,
    set_task,
    sora,
    succeed,
    task_ids,
    task_row,
    tasks_of,
)


def _settled_with_failures(engine: sa.Engine) -> tuple[str, list[str]]:
    """Settled; prices 10, 15, 20, 40, 10, 0 (reserved 95); 300 credits granted.

    0 failed ``error`` (after 3 attempts), 1 failed ``submit_exhausted``, 2 failed
    ``input_moderation``, 3 failed ``api_error``, 4 succeeded, 5 invalid at creation.
    """
    batch_id = new_batch(
        engine, [SORA_10, SORA_15, VEO_FLASH, VEO_PRO, sora("ok"), INVALID_MODEL], credits=300
    )
    ids = task_ids(engine, batch_id)
    fail(engine, ids[0], "error", "error: generation failed")
    set_task(engine, ids[0], attempts=3, progress=70)
    fail(engine, ids[1], "submit_exhausted", "SUBMIT_FAILED: HTTP 503")
    set_task(engine, ids[1], attempts=3)
    fail(engine, ids[2], "input_moderation", "input_moderation: nsfw")
    fail(engine, ids[3], "api_error", "bad request")
    succeed(engine, ids[4])
    assert settle_batch(engine, batch_id).settled
    return batch_id, ids


def test_a_settled_batch_retries_retryable_failures_with_a_new_reservation(
    engine: sa.Engine,
) -> None:
    batch_id, ids = _settled_with_failures(engine)
    assert money(engine, "alice") == (300 - 10, 0)  # only index 4 was charged
    untouched_before = [task_row(engine, i) for i in ids[2:]]
    ledger_before = ledger_of(engine, batch_id)

    started = retry_failed_tasks(engine, batch_id, RetryPolicy())

    assert (started.retried, started.retry_credits, started.short_of_credits) == (2, 25, 0)
    assert ledger_of(engine, batch_id) == [
        *ledger_before,
        ("reserve", ids[0], 2, 10),
        ("reserve", ids[1], 2, 15),
    ]
    for task_id in ids[:2]:
        task = task_row(engine, task_id)
        assert (task["status"], task["attempts"], task["progress"]) == ("pending", 0, 0)
        assert (task["grsai_task_id"], task["video_url"]) == (None, None)
    assert [task_row(engine, i) for i in ids[2:]] == untouched_before
    batch = batch_row(engine, batch_id)
    assert (batch["status"], batch["settled_at"]) == ("running", None)
    assert batch["reserved_credits"] == 95 + 25
    assert money(engine, "alice") == (290 - 25, 25)
    assert_ledger_invariants(engine)


def test_a_retried_batch_settles_again_and_numbers_each_reservation(engine: sa.Engine) -> None:
    batch_id, ids = _settled_with_failures(engine)
    retry_failed_tasks(engine, batch_id, RetryPolicy())
    succeed(engine, ids[0])
    fail(engine, ids[1], "submit_exhausted", "SUBMIT_FAILED: again")

    second = settle_batch(engine, batch_id)

    assert (second.settled, second.reserved_credits) == (True, 120)
    assert (second.charged_credits, second.refunded_credits) == (10 + 10, 10 + 15 + 20 + 40 + 15)
    closes = [e for e in ledger_of(engine, batch_id) if e[2] == 2 and e[0] != "reserve"]
    assert closes == [("charge", ids[0], 2, 10), ("refund", ids[1], 2, 15)]
    assert money(engine, "alice") == (300 - 20, 0)
    assert_ledger_invariants(engine)

    third = retry_failed_tasks(engine, batch_id, RetryPolicy())

    assert (third.retried, third.retry_credits) == (1, 15)
    assert ledger_of(engine, batch_id)[-1] == ("reserve", ids[1], 3, 15)
    assert task_row(engine, ids[0])["status"] == "succeeded"
    assert_ledger_invariants(engine)


def _settled_short_of_credits(engine: sa.Engine) -> tuple[str, str]:
    """Settled: a charged Sora 10 and a refunded Veo Pro (40), whose refund another batch
    then spent: the balance is 0. Returns the batch and the failed task."""
    batch_id = new_batch(engine, [SORA_10, VEO_PRO], credits=50)
    ids = task_ids(engine, batch_id)
    succeed(engine, ids[0])
    fail(engine, ids[1], "error", "error: upstream crashed")
    settle_batch(engine, batch_id)
    create_batch(engine, "alice", [VEO_PRO], PriceTable())  # spends the refunded 40
    assert money(engine, "alice") == (0, 40)
    return batch_id, ids[1]


def test_a_retry_the_balance_cannot_cover_stays_failed_and_says_so_once(
    engine: sa.Engine,
) -> None:
    batch_id, failed = _settled_short_of_credits(engine)
    settled_at = batch_row(engine, batch_id)["settled_at"]
    entries = ledger_count(engine)

    started = retry_failed_tasks(engine, batch_id, RetryPolicy())

    assert (started.retried, started.retry_credits, started.short_of_credits) == (0, 0, 1)
    task = task_row(engine, failed)
    assert (task["status"], task["failure_kind"]) == ("failed", "error")
    assert task["error_message"] == (
        "INSUFFICIENT_CREDITS: a retry needs 40 credits but the balance is 0"
    )
    assert ledger_count(engine) == entries
    assert money(engine, "alice") == (0, 40)
    batch = batch_row(engine, batch_id)
    assert (batch["status"], batch["settled_at"]) == ("settled", settled_at)
    # A second run short of credits has nothing new to say, and writes nothing.
    before = table_snapshot(engine)

    again = retry_failed_tasks(engine, batch_id, RetryPolicy())

    assert (again.retried, again.short_of_credits) == (0, 1)
    assert table_snapshot(engine) == before
    assert_ledger_invariants(engine)


def test_a_refused_retry_follows_the_balance_and_goes_ahead_once_it_is_covered(
    engine: sa.Engine,
) -> None:
    batch_id, failed = _settled_short_of_credits(engine)
    retry_failed_tasks(engine, batch_id, RetryPolicy())
    grant_credits(engine, "alice", 5)

    still_short = retry_failed_tasks(engine, batch_id, RetryPolicy())

    assert (still_short.retried, still_short.short_of_credits) == (0, 1)
    assert task_row(engine, failed)["error_message"] == (
        "INSUFFICIENT_CREDITS: a retry needs 40 credits but the balance is 5"
    )
    grant_credits(engine, "alice", 35)

    covered = retry_failed_tasks(engine, batch_id, RetryPolicy())

    assert (covered.retried, covered.retry_credits, covered.short_of_credits) == (1, 40, 0)
    assert task_row(engine, failed)["status"] == "pending"
    assert ledger_of(engine, batch_id)[-1] == ("reserve", failed, 2, 40)
    assert batch_row(engine, batch_id)["status"] == "running"
    assert money(engine, "alice") == (0, 80)
    assert_ledger_invariants(engine)


def test_a_short_balance_retries_what_it_covers_in_index_order(engine: sa.Engine) -> None:
    batch_id = new_batch(engine, [SORA_15, SORA_10, sora("third")], credits=35)
    ids = task_ids(engine, batch_id)
    for task_id in ids:
        fail(engine, task_id, "error")
    settle_batch(engine, batch_id)
    create_batch(engine, "alice", [VEO_FLASH], PriceTable())  # balance 35 -> 15
    assert money(engine, "alice") == (15, 20)

    started = retry_failed_tasks(engine, batch_id, RetryPolicy())

    # 15 covers index 0 (15) and then nothing else (10 each).
    assert (started.retried, started.retry_credits, started.short_of_credits) == (1, 15, 2)
    assert [t["status"] for t in tasks_of(engine, batch_id)] == ["pending", "failed", "failed"]
    assert ledger_of(engine, batch_id)[-1] == ("reserve", ids[0], 2, 15)
    assert money(engine, "alice") == (0, 35)
    assert_ledger_invariants(engine)


def test_a_fully_succeeded_settled_batch_is_left_exactly_as_it_is(engine: sa.Engine) -> None:
    batch_id = new_batch(engine, [SORA_10, VEO_FLASH, INVALID_MODEL])
    for task_id in task_ids(engine, batch_id)[:2]:
        succeed(engine, task_id)
    settle_batch(engine, batch_id)
    before = table_snapshot(engine)

    started = retry_failed_tasks(engine, batch_id, RetryPolicy())

    assert table_snapshot(engine) == before
    assert (started.retried, started.retry_credits, started.short_of_credits) == (0, 0, 0)


def test_an_unsettled_batch_retries_nothing(engine: sa.Engine) -> None:
    batch_id = new_batch(engine, [SORA_10, SORA_15])
    ids = task_ids(engine, batch_id)
    fail(engine, ids[0], "error")  # final, but the batch has not settled yet
    before = table_snapshot(engine)

    assert retry_failed_tasks(engine, batch_id, RetryPolicy()).retried == 0
    assert table_snapshot(engine) == before


def test_retrying_an_unknown_batch_raises_unknown_batch(engine: sa.Engine) -> None:
    with pytest.raises(UnknownBatch):
        retry_failed_tasks(engine, "no-such-batch", RetryPolicy())
    assert ledger_kinds(engine, "no-such-batch") == {}


def test_overlapping_runs_retrying_at_once_reserve_each_retry_once(engine: sa.Engine) -> None:
    for round_number in range(5):
        user = f"user-{round_number}"
        batch_id = new_batch(engine, [SORA_10, VEO_FLASH, sora("c")], user=user, credits=100)
        ids = task_ids(engine, batch_id)
        fail(engine, ids[0], "error")
        fail(engine, ids[1], "submit_exhausted")
        succeed(engine, ids[2])
        settle_batch(engine, batch_id)

        results = run_together(
            [lambda b=batch_id: retry_failed_tasks(engine, b, RetryPolicy())] * 2
        )

        assert sorted(r.retried for r in results) == [0, 2]
        second_reserves = [e for e in ledger_of(engine, batch_id) if e[2] == 2]
        assert second_reserves == [("reserve", ids[0], 2, 10), ("reserve", ids[1], 2, 20)]
        assert money(engine, user) == (100 - 10 - 30, 30)
    assert_ledger_invariants(engine)


def test_a_task_is_retried_by_backfill_at_most_the_limit_then_its_failure_is_final(
    engine: sa.Engine,
) -> None:
    """Issue 24: each retry is a reservation (video_tasks.reservation, the ledger's number);
    after ``max_backfill_retries`` of them the failure is final, says so, and costs nothing."""
    policy = RetryPolicy(max_backfill_retries=2)
    batch_id, ids = _settled_with_failures(engine)
    for reservation in (2, 3):
        started = retry_failed_tasks(engine, batch_id, policy)
        assert (started.retried, started.final) == (2, 0)
        assert task_row(engine, ids[0])["reservation"] == reservation
        reserves = [e for e in ledger_of(engine, batch_id) if e[:2] == ("reserve", ids[0])]
        assert reserves[-1][2] == reservation
        fail(engine, ids[0], "error", "error: generation failed")
        fail(engine, ids[1], "submit_exhausted", "SUBMIT_FAILED: HTTP 503")
        assert settle_batch(engine, batch_id).settled
    assert batches_to_retry(engine) == [batch_id]  # its failures are to be marked final
    ledger_before = ledger_count(engine)

    third = retry_failed_tasks(engine, batch_id, policy)
    again = retry_failed_tasks(engine, batch_id, policy)

    assert (third.retried, third.final, third.retry_credits) == (0, 2, 0)
    assert again.final == 0  # final already: nothing left to retry or mark
    assert ledger_count(engine) == ledger_before
    message = task_row(engine, ids[0])["error_message"]
    assert message == "error: generation failed (final: retried by backfill 2 time(s), the limit)"
    assert task_row(engine, ids[0])["status"] == "failed"
    assert task_row(engine, ids[0])["failure_kind"] == "retries_exhausted"
    assert batches_to_retry(engine) == []
    assert_ledger_invariants(engine)


def test_batches_to_retry_are_the_settled_ones_with_a_retryable_failure(engine: sa.Engine) -> None:
    retryable, _ = _settled_with_failures(engine)
    moderated = new_batch(engine, [sora("flagged")], credits=100)
    fail(engine, task_ids(engine, moderated)[0], "input_moderation", "input_moderation: nsfw")
    clean = new_batch(engine, [sora("fine")], credits=100)
    succeed(engine, task_ids(engine, clean)[0])
    running = new_batch(engine, [sora("later"), sora("now")], credits=100)
    fail(engine, task_ids(engine, running)[1], "error", "error: generation failed")
    for batch_id in (moderated, clean, running):
        settle_batch(engine, batch_id)

    assert batches_to_retry(engine) == [retryable]
