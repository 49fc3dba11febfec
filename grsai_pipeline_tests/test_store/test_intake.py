"""Batches a web app writes as rows (SPEC 1): taken in before any task is sent, priced from the
price table, reserved whole in one transaction or refused whole, exactly once; and paid before
sent, whoever wrote the row."""

from __future__ import annotations

from contextlib import ExitStack

import sqlalchemy as sa

from grsai_pipeline.domain.pricing import PriceTable
from grsai_pipeline.store.accounts import grant_credits
from grsai_pipeline.store.audit import verify_ledger
from grsai_pipeline.store.intake import Intake, awaiting_intake, take_in_batch
from grsai_pipeline.store.runners import Heartbeat
from grsai_pipeline_tests.helpers import (
    assert_ledger_invariants,
    rows,
    table_snapshot,
    write_rows_batch,
)
from grsai_pipeline_tests.test_store.store_support import (
    LONG_LEASE,
    batch_row,
    claim,
    execute,
    money,
    run_together,
    tasks_of,
)

SORA = {"prompt": "a lighthouse at dawn", "model": "sora-2"}
SORA_15 = {"prompt": "a storm at sea", "model": "sora-2", "duration": 15}
VEO_PRO = {"prompt": "a city at night", "model": "veo-pro"}


def _reserves(engine: sa.Engine, batch_id: str) -> list[dict[str, object]]:
    return rows(
        engine,
        "SELECT video_task_id, amount, reservation, transaction_id FROM credit_ledger"
        " WHERE batch_job_id = :b AND kind = 'reserve'",
        b=batch_id,
    )


def test_a_batch_written_as_rows_is_priced_from_the_table_and_reserved_in_one_transaction(
    engine: sa.Engine,
) -> None:
    grant_credits(engine, "alice", 100)
    # The writer's own price (1) is not trusted.
    batch_id = write_rows_batch(engine, "alice", [SORA, SORA_15, VEO_PRO], price=1)
    with engine.connect() as conn:
        assert awaiting_intake(conn) == [batch_id]

    intake = take_in_batch(engine, batch_id, PriceTable())

    assert intake == Intake(batch_id, priced=3, invalid=0, reserved_credits=65)
    tasks = tasks_of(engine, batch_id)
    assert [(t["status"], t["price"]) for t in tasks] == [
        ("pending", 10),
        ("pending", 15),
        ("pending", 40),
    ]
    reserves = _reserves(engine, batch_id)
    assert sorted((r["amount"], r["reservation"]) for r in reserves) == [(10, 1), (15, 1), (40, 1)]
    assert len({r["transaction_id"] for r in reserves}) == 1
    assert money(engine, "alice") == (35, 65)
    assert (
        batch_row(engine, batch_id)["status"],
        batch_row(engine, batch_id)["reserved_credits"],
    ) == (
        "pending",
        65,
    )
    assert verify_ledger(engine) == []
    assert_ledger_invariants(engine)
    # A second intake (another runner meeting the batch) finds nothing to do and writes nothing.
    before = table_snapshot(engine)
    assert take_in_batch(engine, batch_id, PriceTable()) == Intake(batch_id)
    assert table_snapshot(engine) == before
    with engine.connect() as conn:
        assert awaiting_intake(conn) == []


def test_a_batch_the_balance_cannot_cover_is_refused_whole_and_settled(engine: sa.Engine) -> None:
    grant_credits(engine, "bob", 25)
    batch_id = write_rows_batch(engine, "bob", [SORA, SORA, SORA])

    intake = take_in_batch(engine, batch_id, PriceTable())

    assert intake.refused is not None and intake.reserved_credits == 0
    for task in tasks_of(engine, batch_id):
        assert task["status"] == "failed"
        assert task["error_message"].startswith("INSUFFICIENT_CREDITS:")
        assert "30" in task["error_message"] and "25" in task["error_message"]
    batch = batch_row(engine, batch_id)
    assert batch["status"] == "settled" and batch["settled_at"] is not None
    assert batch["error_message"].startswith("INSUFFICIENT_CREDITS:")
    assert rows(engine, "SELECT * FROM credit_ledger WHERE batch_job_id = :b", b=batch_id) == []
    assert money(engine, "bob") == (25, 0)
    assert claim(engine, batch_id, "runner-a") == []
    assert verify_ledger(engine) == []


def test_a_writer_with_no_account_is_refused_and_gets_an_empty_account(engine: sa.Engine) -> None:
    batch_id = write_rows_batch(engine, "nobody", [SORA])

    assert take_in_batch(engine, batch_id, PriceTable()).refused is not None
    assert money(engine, "nobody") == (0, 0)


def test_invalid_rows_fail_as_invalid_input_and_reserve_nothing(engine: sa.Engine) -> None:
    grant_credits(engine, "alice", 100)
    bad_model = {"prompt": "a dragon", "model": "sora-3"}
    blank = {"prompt": "   ", "model": "sora-2"}
    batch_id = write_rows_batch(engine, "alice", [bad_model, SORA, blank], price=50)

    intake = take_in_batch(engine, batch_id, PriceTable())

    assert (intake.priced, intake.invalid, intake.reserved_credits) == (1, 2, 10)
    bad, good, empty = tasks_of(engine, batch_id)
    for task, field in ((bad, "model"), (empty, "prompt")):
        assert (task["status"], task["price"], task["failure_kind"]) == (
            "failed",
            0,
            "invalid_input",
        )
        assert task["error_message"].startswith(f"INVALID_INPUT: {field}")
    assert good["status"] == "pending"
    assert [r["video_task_id"] for r in _reserves(engine, batch_id)] == [good["id"]]
    assert money(engine, "alice") == (90, 10)


def test_three_runners_meeting_the_batch_at_once_reserve_each_task_once(
    engine: sa.Engine,
) -> None:
    grant_credits(engine, "alice", 1000)
    batch_id = write_rows_batch(engine, "alice", [SORA] * 20)

    def runner(name: str) -> list[str]:
        # What an engine's rescan does: take the batch in, then claim what is paid for.
        take_in_batch(engine, batch_id, PriceTable())
        return [c.state.id for c in claim(engine, batch_id, name, 20)]

    names = [f"runner-{n}" for n in range(3)]
    with ExitStack() as alive:
        for name in names:
            alive.enter_context(Heartbeat(engine, name, LONG_LEASE))
        claimed = run_together([lambda name=name: runner(name) for name in names])  # type: ignore[misc]

    reserves = _reserves(engine, batch_id)
    assert len(reserves) == 20 and len({r["video_task_id"] for r in reserves}) == 20
    assert len({r["transaction_id"] for r in reserves}) == 1
    every_claim = [task for found in claimed for task in found]
    assert len(every_claim) == len(set(every_claim))
    assert money(engine, "alice") == (800, 200)
    assert_ledger_invariants(engine)


def test_a_task_is_claimed_only_while_its_reservation_holds_its_reserve(
    engine: sa.Engine,
) -> None:
    grant_credits(engine, "alice", 100)
    batch_id = write_rows_batch(engine, "alice", [SORA])
    (task_id,) = [t["id"] for t in tasks_of(engine, batch_id)]
    # Marked priced by hand, at a price, with no reserve: paid before sent says no.
    execute(
        engine,
        "UPDATE video_tasks SET status = 'pending', price = 10, priced_at = created_at"
        " WHERE id = :t",
        t=task_id,
    )
    assert claim(engine, batch_id, "runner-a") == []
    with engine.connect() as conn:
        assert awaiting_intake(conn) == []

    execute(
        engine,
        "INSERT INTO credit_ledger (user_id, batch_job_id, video_task_id, kind, amount,"
        " reservation, transaction_id, created_at)"
        " VALUES ('alice', :b, :t, 'reserve', 10, 1, 'by-hand', CURRENT_TIMESTAMP)",
        b=batch_id,
        t=task_id,
    )
    assert [c.state.id for c in claim(engine, batch_id, "runner-b")] == [task_id]

    execute(engine, "UPDATE video_tasks SET claimed_by = NULL WHERE id = :t", t=task_id)
    execute(
        engine,
        "INSERT INTO credit_ledger (user_id, batch_job_id, video_task_id, kind, amount,"
        " reservation, transaction_id, created_at)"
        " VALUES ('alice', :b, :t, 'refund', 10, 1, 'by-hand-2', CURRENT_TIMESTAMP)",
        b=batch_id,
        t=task_id,
    )
    # Refunded: the reservation is closed, so nothing pays for a submit any more.
    assert claim(engine, batch_id, "runner-c") == []


def test_a_free_task_written_as_a_row_is_sent_once_taken_in(engine: sa.Engine) -> None:
    batch_id = write_rows_batch(engine, "carol", [VEO_PRO])
    assert claim(engine, batch_id, "runner-a") == []

    intake = take_in_batch(engine, batch_id, PriceTable({"veo-pro": 0}))

    assert (intake.priced, intake.reserved_credits, intake.refused) == (1, 0, None)
    assert len(claim(engine, batch_id, "runner-a")) == 1
