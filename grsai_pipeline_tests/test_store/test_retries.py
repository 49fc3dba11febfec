"""Getting a batch ready to run (SPEC 1, 2, 4): a settled batch retries its retryable failures
with a new reservation; rows other writers left are queued or failed as invalid."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from grsai_pipeline.domain.pricing import PriceTable
from grsai_pipeline.store.batches import create_batch, get_batch
from grsai_pipeline.store.errors import UnknownBatch
from grsai_pipeline.store.retries import prepare_batch
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
    insert_task,
    ledger_count,
    ledger_of,
    money,
    reserve_as_other_writer,
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

    prepared = prepare_batch(engine, batch_id)

    assert (prepared.retried, prepared.retry_credits, prepared.short_of_credits) == (2, 25, 0)
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
    prepare_batch(engine, batch_id)
    succeed(engine, ids[0])
    fail(engine, ids[1], "submit_exhausted", "SUBMIT_FAILED: again")

    second = settle_batch(engine, batch_id)

    assert (second.settled, second.reserved_credits) == (True, 120)
    assert (second.charged_credits, second.refunded_credits) == (10 + 10, 10 + 15 + 20 + 40 + 15)
    closes = [e for e in ledger_of(engine, batch_id) if e[2] == 2 and e[0] != "reserve"]
    assert closes == [("charge", ids[0], 2, 10), ("refund", ids[1], 2, 15)]
    assert money(engine, "alice") == (300 - 20, 0)
    assert_ledger_invariants(engine)

    third = prepare_batch(engine, batch_id)

    assert (third.retried, third.retry_credits) == (1, 15)
    assert ledger_of(engine, batch_id)[-1] == ("reserve", ids[1], 3, 15)
    assert task_row(engine, ids[0])["status"] == "succeeded"
    assert_ledger_invariants(engine)


def test_a_retry_the_balance_cannot_cover_stays_failed_and_reserves_nothing(
    engine: sa.Engine,
) -> None:
    batch_id = new_batch(engine, [SORA_10, VEO_PRO], credits=50)
    ids = task_ids(engine, batch_id)
    succeed(engine, ids[0])
    fail(engine, ids[1], "error", "error: upstream crashed")
    settle_batch(engine, batch_id)
    create_batch(engine, "alice", [VEO_PRO], PriceTable())  # spends the refunded 40
    assert money(engine, "alice") == (0, 40)
    settled_at = batch_row(engine, batch_id)["settled_at"]
    entries = ledger_count(engine)

    for _ in range(2):  # a second try must not wrap the message twice
        prepared = prepare_batch(engine, batch_id)

        assert (prepared.retried, prepared.short_of_credits) == (0, 1)
        task = task_row(engine, ids[1])
        assert (task["status"], task["failure_kind"]) == ("failed", "error")
        assert task["error_message"].startswith("INSUFFICIENT_CREDITS:")
        assert task["error_message"].count("INSUFFICIENT_CREDITS") == 1
        assert "error: upstream crashed" in task["error_message"]
        assert ledger_count(engine) == entries
        assert money(engine, "alice") == (0, 40)
        assert (
            batch_row(engine, batch_id)["status"],
            batch_row(engine, batch_id)["settled_at"],
        ) == (
            "settled",
            settled_at,
        )
    assert_ledger_invariants(engine)


def test_a_short_balance_retries_what_it_covers_in_index_order(engine: sa.Engine) -> None:
    batch_id = new_batch(engine, [SORA_15, SORA_10, sora("third")], credits=35)
    ids = task_ids(engine, batch_id)
    for task_id in ids:
        fail(engine, task_id, "error")
    settle_batch(engine, batch_id)
    create_batch(engine, "alice", [VEO_FLASH], PriceTable())  # balance 35 -> 15
    assert money(engine, "alice") == (15, 20)

    prepared = prepare_batch(engine, batch_id)

    # 15 covers index 0 (15) and then nothing else (10 each).
    assert (prepared.retried, prepared.retry_credits, prepared.short_of_credits) == (1, 15, 2)
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

    prepared = prepare_batch(engine, batch_id)

    assert table_snapshot(engine) == before
    assert (prepared.retried, prepared.requeued, prepared.invalid) == (0, 0, 0)


def test_an_unsettled_batch_retries_nothing(engine: sa.Engine) -> None:
    batch_id = new_batch(engine, [SORA_10, SORA_15])
    ids = task_ids(engine, batch_id)
    fail(engine, ids[0], "error")  # final, but the batch has not settled yet
    before = table_snapshot(engine)

    assert prepare_batch(engine, batch_id).retried == 0
    assert table_snapshot(engine) == before


def test_queued_rows_become_pending(engine: sa.Engine) -> None:
    batch_id = new_batch(engine, [SORA_10])
    queued = insert_task(engine, batch_id, 1, status="queued")

    prepared = prepare_batch(engine, batch_id)

    assert prepared.requeued == 1
    assert task_row(engine, queued)["status"] == "pending"
    assert get_batch(engine, batch_id).counts["pending"] == 2


def test_an_invalid_row_from_another_writer_fails_and_is_refunded(engine: sa.Engine) -> None:
    batch_id = new_batch(engine, [SORA_10], credits=100)
    bad = insert_task(engine, batch_id, 1, status="queued", model="veo-ultra", price=20)
    reserve_as_other_writer(engine, user_id="alice", batch_id=batch_id, task_id=bad, amount=20)
    assert money(engine, "alice") == (70, 30)
    assert_ledger_invariants(engine)

    prepared = prepare_batch(engine, batch_id)

    assert (prepared.requeued, prepared.invalid) == (1, 1)
    row = task_row(engine, bad)
    assert (row["status"], row["failure_kind"]) == ("failed", "invalid_input")
    assert row["error_message"].startswith("INVALID_INPUT:") and "model" in row["error_message"]
    assert task_row(engine, task_ids(engine, batch_id)[0])["status"] == "pending"

    succeed(engine, task_ids(engine, batch_id)[0])
    result = settle_batch(engine, batch_id)

    assert (result.settled, result.charged_credits, result.refunded_credits) == (True, 10, 20)
    assert ("refund", bad, 1, 20) in ledger_of(engine, batch_id)
    assert money(engine, "alice") == (90, 0)
    assert_ledger_invariants(engine)
    # An invalid failure is never retried by a later run.
    before = table_snapshot(engine)
    assert prepare_batch(engine, batch_id).retried == 0
    assert table_snapshot(engine) == before


def test_prepare_an_unknown_batch_raises_unknown_batch(engine: sa.Engine) -> None:
    with pytest.raises(UnknownBatch):
        prepare_batch(engine, "no-such-batch")
    assert ledger_kinds(engine, "no-such-batch") == {}


def test_overlapping_runs_preparing_at_once_reserve_each_retry_once(engine: sa.Engine) -> None:
    for round_number in range(5):
        user = f"user-{round_number}"
        batch_id = new_batch(engine, [SORA_10, VEO_FLASH, sora("c")], user=user, credits=100)
        ids = task_ids(engine, batch_id)
        fail(engine, ids[0], "error")
        fail(engine, ids[1], "submit_exhausted")
        succeed(engine, ids[2])
        settle_batch(engine, batch_id)

        results = run_together([lambda b=batch_id: prepare_batch(engine, b)] * 2)

        assert sorted(r.retried for r in results) == [0, 2]
        second_reserves = [e for e in ledger_of(engine, batch_id) if e[2] == 2]
        assert second_reserves == [("reserve", ids[0], 2, 10), ("reserve", ids[1], 2, 20)]
        assert money(engine, user) == (100 - 10 - 30, 30)
    assert_ledger_invariants(engine)
