"""Creating a batch reserves its credits all or nothing (SPEC 1, 2); accounts take grants."""

from __future__ import annotations

from typing import Any

import pytest
import sqlalchemy as sa

from grsai_pipeline.domain.pricing import PriceTable
from grsai_pipeline.errors import InsufficientCredits, InvalidInput, UnknownAccount, UnknownBatch
from grsai_pipeline.store.accounts import get_account, grant_credits
from grsai_pipeline.store.batches import create_batch, get_batch
from grsai_pipeline.store.schema import video_tasks
from grsai_pipeline_tests.helpers import (
    assert_ledger_invariants,
    ledger_kinds,
    new_batch,
    rows,
    table_snapshot,
)
from grsai_pipeline_tests.test_store.store_support import (
    INVALID_MODEL,
    PRICE,
    SORA_10,
    SORA_15,
    VEO_FLASH,
    VEO_PRO,
    batch_row,
    execute,
    insert_task,
    ledger_of,
    money,
    run_together,
    set_task,
    sora,
    tasks_of,
)


def _create(engine: sa.Engine, tasks: list[Any], user: str = "alice") -> str:
    return create_batch(engine, user, tasks, PriceTable()).batch_id


def test_create_batch_reserves_each_valid_task_at_its_default_price(engine: sa.Engine) -> None:
    grant_credits(engine, "alice", 200)
    default_sora = {"prompt": "No duration given", "model": "sora-2"}

    created = create_batch(
        engine, "alice", [SORA_10, SORA_15, VEO_FLASH, VEO_PRO, default_sora], PriceTable()
    )

    prices = [PRICE["sora-2:10"], PRICE["sora-2:15"], PRICE["veo-flash"], PRICE["veo-pro"], 10]
    assert prices == [10, 15, 20, 40, 10]
    assert (created.total_tasks, created.invalid_tasks, created.reserved_credits) == (5, 0, 95)
    tasks = tasks_of(engine, created.batch_id)
    assert [t["batch_index"] for t in tasks] == [0, 1, 2, 3, 4]
    assert [t["price"] for t in tasks] == prices
    assert {t["status"] for t in tasks} == {"pending"}
    assert {t["attempts"] for t in tasks} == {0}
    assert {t["user_id"] for t in tasks} == {"alice"}
    assert ledger_of(engine, created.batch_id) == [
        ("reserve", t["id"], 1, price) for t, price in zip(tasks, prices, strict=True)
    ]
    assert money(engine, "alice") == (200 - 95, 95)
    batch = batch_row(engine, created.batch_id)
    assert batch["user_id"] == "alice"
    assert batch["status"] == "pending"
    assert batch["total_tasks"] == 5
    assert (batch["reserved_credits"], batch["charged_credits"], batch["refunded_credits"]) == (
        95,
        0,
        0,
    )
    assert batch["settled_at"] is None
    assert_ledger_invariants(engine)


def test_defaults_are_applied_and_stored_with_the_task(engine: sa.Engine) -> None:
    batch_id = new_batch(engine, [{"prompt": "p", "model": "sora-2"}, VEO_PRO, VEO_FLASH])

    with engine.connect() as conn:
        stored = conn.execute(
            sa.select(
                video_tasks.c.model,
                video_tasks.c.aspect_ratio,
                video_tasks.c.duration,
                video_tasks.c.meta,
            )
            .where(video_tasks.c.batch_job_id == batch_id)
            .order_by(video_tasks.c.batch_index)
        ).all()
    assert [tuple(row) for row in stored] == [
        ("sora-2", "9:16", 10, None),
        ("veo-pro", "16:9", None, None),
        ("veo-flash", "16:9", None, VEO_FLASH["meta"]),
    ]


def test_prices_come_from_the_configured_table(engine: sa.Engine) -> None:
    grant_credits(engine, "alice", 100)
    prices = PriceTable({"veo-pro": 7, "sora-2:15": 0})

    created = create_batch(engine, "alice", [VEO_PRO, SORA_15, SORA_10], prices)

    tasks = tasks_of(engine, created.batch_id)
    assert [t["price"] for t in tasks] == [7, 0, 10]
    # A free task is valid and pending, and has nothing to reserve.
    assert [t["status"] for t in tasks] == ["pending", "pending", "pending"]
    assert ledger_of(engine, created.batch_id) == [
        ("reserve", tasks[0]["id"], 1, 7),
        ("reserve", tasks[2]["id"], 1, 10),
    ]
    assert created.reserved_credits == 17
    assert money(engine, "alice") == (83, 17)


def _refuse_ledger_inserts_of(engine: sa.Engine, amount: int) -> None:
    """A database-side fault: any ledger insert of ``amount`` fails (a real trigger)."""
    if engine.dialect.name == "postgresql":
        execute(
            engine,
            "CREATE FUNCTION test_refuse_insert() RETURNS trigger LANGUAGE plpgsql AS $$"
            " BEGIN RAISE EXCEPTION 'refused by the test'; END $$",
        )
        execute(
            engine,
            "CREATE TRIGGER test_refuse_insert BEFORE INSERT ON credit_ledger FOR EACH ROW"
            f" WHEN (NEW.amount = {amount}) EXECUTE FUNCTION test_refuse_insert()",
        )
    else:
        execute(
            engine,
            "CREATE TRIGGER test_refuse_insert BEFORE INSERT ON credit_ledger"
            f" WHEN NEW.amount = {amount} BEGIN SELECT RAISE(ABORT, 'refused by the test'); END",
        )


def test_batch_tasks_and_reservations_commit_together_or_not_at_all(engine: sa.Engine) -> None:
    grant_credits(engine, "alice", 500)
    _refuse_ledger_inserts_of(engine, PRICE["veo-pro"])
    before = table_snapshot(engine)

    # The last reservation fails after the batch, its tasks and the first reserve were sent.
    with pytest.raises(sa.exc.DBAPIError, match="refused by the test"):
        _create(engine, [SORA_10, VEO_FLASH, VEO_PRO])

    assert table_snapshot(engine) == before


def test_an_invalid_task_fails_at_once_and_reserves_nothing(engine: sa.Engine) -> None:
    grant_credits(engine, "alice", 100)
    tasks: list[Any] = [
        SORA_10,
        INVALID_MODEL,
        {"prompt": "   ", "model": "sora-2"},
        {"prompt": "Veo takes no duration", "model": "veo-pro", "duration": 10},
        VEO_FLASH,
        {"prompt": "p", "model": "sora-2", "reference_url": "ftp://example.com/a.jpg"},
        {"prompt": "p", "model": "sora-2", "duration": 12},
        "not an object",
    ]

    created = create_batch(engine, "alice", tasks, PriceTable())

    stored = tasks_of(engine, created.batch_id)
    assert [t["status"] for t in stored] == [
        "pending", "failed", "failed", "failed", "pending", "failed", "failed", "failed",
    ]  # fmt: skip
    invalid = [t for t in stored if t["status"] == "failed"]
    for task, field in zip(
        invalid, ["model", "prompt", "duration", "reference_url", "duration", "task"], strict=True
    ):
        assert task["error_message"].startswith("INVALID_INPUT:"), task
        assert field in task["error_message"], task
        assert task["price"] == 0
    assert (created.total_tasks, created.invalid_tasks, created.reserved_credits) == (8, 6, 30)
    assert ledger_of(engine, created.batch_id) == [
        ("reserve", stored[0]["id"], 1, 10),
        ("reserve", stored[4]["id"], 1, 20),
    ]
    assert money(engine, "alice") == (70, 30)
    assert batch_row(engine, created.batch_id)["reserved_credits"] == 30
    assert_ledger_invariants(engine)


def test_a_batch_the_balance_cannot_cover_writes_nothing(engine: sa.Engine) -> None:
    new_batch(engine, [SORA_10], credits=60)  # an earlier batch: balance 50, held 10
    before = table_snapshot(engine)

    with pytest.raises(InsufficientCredits) as refused:
        _create(engine, [VEO_PRO, SORA_15, INVALID_MODEL])

    assert (refused.value.balance, refused.value.needed) == (50, 55)
    assert "50" in str(refused.value) and "55" in str(refused.value)
    assert table_snapshot(engine) == before

    # Exactly enough is enough.
    grant_credits(engine, "alice", 5)
    created = create_batch(engine, "alice", [VEO_PRO, SORA_15, INVALID_MODEL], PriceTable())
    assert created.reserved_credits == 55
    assert money(engine, "alice") == (0, 65)
    assert_ledger_invariants(engine)


def test_a_user_without_an_account_cannot_reserve_and_gets_no_account(engine: sa.Engine) -> None:
    before = table_snapshot(engine)

    with pytest.raises(InsufficientCredits) as refused:
        _create(engine, [SORA_10], user="carol")

    assert (refused.value.balance, refused.value.needed) == (0, 10)
    assert table_snapshot(engine) == before


def test_a_batch_of_only_invalid_tasks_reserves_nothing(engine: sa.Engine) -> None:
    grant_credits(engine, "alice", 30)

    created = create_batch(
        engine, "alice", [INVALID_MODEL, {"prompt": "", "model": "veo-pro"}], PriceTable()
    )

    assert (created.total_tasks, created.invalid_tasks, created.reserved_credits) == (2, 2, 0)
    assert [t["status"] for t in tasks_of(engine, created.batch_id)] == ["failed", "failed"]
    assert ledger_kinds(engine, created.batch_id) == {}
    assert batch_row(engine, created.batch_id)["reserved_credits"] == 0
    assert money(engine, "alice") == (30, 0)


def test_an_empty_batch_or_user_is_refused_without_writes(engine: sa.Engine) -> None:
    grant_credits(engine, "alice", 30)
    before = table_snapshot(engine)

    with pytest.raises(InvalidInput, match="tasks must hold at least one task"):
        _create(engine, [])
    with pytest.raises(InvalidInput, match="user must not be empty"):
        _create(engine, [SORA_10], user="  ")

    assert table_snapshot(engine) == before


def test_a_unicode_prompt_with_quotes_and_sql_is_stored_exactly(engine: sa.Engine) -> None:
    prompt = (
        "  日本語の猫 🐈‍⬛ \"double\" 'single' `back` \u2018curly\u2019 «guillemets» — עברית\r\n"
        "\t'); DROP TABLE credit_ledger; -- %s %(x)s :param ? \\ \\' e\u0301 \U0001f3ac  "
    )
    batch_id = new_batch(engine, [sora(prompt), {**VEO_PRO, "prompt": prompt}])

    stored = rows(
        engine,
        "SELECT prompt FROM video_tasks WHERE batch_job_id = :b ORDER BY batch_index",
        b=batch_id,
    )
    assert [r["prompt"] for r in stored] == [prompt, prompt]
    assert [r["prompt"].encode("utf-8") for r in stored] == [prompt.encode("utf-8")] * 2
    assert [t.prompt for t in get_batch(engine, batch_id).tasks] == [prompt, prompt]
    assert ledger_kinds(engine, batch_id) == {"reserve": 2}


def test_get_batch_counts_each_status_and_the_progress(engine: sa.Engine) -> None:
    batch_id = new_batch(engine, [sora(f"task {i}") for i in range(5)] + [INVALID_MODEL])
    ids = [t["id"] for t in tasks_of(engine, batch_id)]
    set_task(engine, ids[1], status="processing", progress=40, grsai_task_id="g-1")
    set_task(engine, ids[2], status="succeeded", progress=100, video_url="https://v/2.mp4")
    set_task(engine, ids[3], status="failed", progress=30, error_message="boom")
    set_task(engine, ids[4], status="queued")
    insert_task(engine, batch_id, 6, status="queued")

    view = get_batch(engine, batch_id)

    assert view.counts == {"pending": 3, "processing": 1, "succeeded": 1, "failed": 2}
    assert view.unfinished == 4
    # Final tasks count as done; queued and pending as 0 %: (40 + 3 * 100) / 7.
    assert view.progress_percent == pytest.approx(48.6, abs=0.05)
    assert [t.batch_index for t in view.tasks] == [0, 1, 2, 3, 4, 5, 6]
    assert [t.status for t in view.tasks][:4] == ["pending", "processing", "succeeded", "failed"]
    assert view.tasks[2].video_url == "https://v/2.mp4"
    assert view.tasks[5].error_message.startswith("INVALID_INPUT:")
    assert (view.status, view.total_tasks, view.reserved_credits) == ("pending", 6, 50)
    assert view.settled_at is None


def test_get_batch_of_an_unknown_id_raises_unknown_batch(engine: sa.Engine) -> None:
    with pytest.raises(UnknownBatch, match="no-such-batch"):
        get_batch(engine, "no-such-batch")


def test_two_batches_racing_for_one_balance_never_overdraw(engine: sa.Engine) -> None:
    for user in ("racer-1", "racer-2", "racer-3"):
        grant_credits(engine, user, 30)

        def attempt(user: str = user) -> object:
            try:
                return create_batch(engine, user, [VEO_FLASH], PriceTable())
            except InsufficientCredits as exc:
                return exc

        outcomes = run_together([attempt, attempt])

        assert sorted(type(o).__name__ for o in outcomes) == ["InsufficientCredits", "NewBatch"]
        assert money(engine, user) == (10, 20)
        batches = rows(engine, "SELECT COUNT(*) AS n FROM batch_jobs WHERE user_id = :u", u=user)
        assert batches == [{"n": 1}]
    assert_ledger_invariants(engine)


# --- accounts -------------------------------------------------------------------------------


def test_grants_create_the_account_and_add_to_the_balance_only(engine: sa.Engine) -> None:
    first = grant_credits(engine, "alice", 25)
    assert (first.user_id, first.balance, first.held) == ("alice", 25, 0)

    batch_id = _create(engine, [SORA_15])
    second = grant_credits(engine, "alice", 5)

    assert (second.balance, second.held) == (15, 15)
    assert money(engine, "alice") == (15, 15)
    grants = rows(
        engine,
        "SELECT amount, batch_job_id, video_task_id, reservation FROM credit_ledger"
        " WHERE kind = 'grant' ORDER BY id",
    )
    assert grants == [
        {"amount": 25, "batch_job_id": None, "video_task_id": None, "reservation": None},
        {"amount": 5, "batch_job_id": None, "video_task_id": None, "reservation": None},
    ]
    assert ledger_kinds(engine, batch_id) == {"reserve": 1}
    assert_ledger_invariants(engine)


def test_a_grant_that_is_not_a_positive_integer_writes_nothing(engine: sa.Engine) -> None:
    grant_credits(engine, "alice", 10)
    before = table_snapshot(engine)

    for amount in (0, -5, True, 2.5, "10", None):
        with pytest.raises(InvalidInput, match="amount must be a positive integer") as info:
            grant_credits(engine, "alice", amount)  # type: ignore[arg-type]
        assert info.value.field == "amount"
        with pytest.raises(InvalidInput, match="amount"):
            grant_credits(engine, "newcomer", amount)  # type: ignore[arg-type]

    assert table_snapshot(engine) == before


def test_a_grant_to_an_empty_user_is_refused(engine: sa.Engine) -> None:
    with pytest.raises(InvalidInput, match="user must not be empty"):
        grant_credits(engine, "   ", 10)
    assert table_snapshot(engine)["credit_accounts"] == []


def test_get_account_reads_the_account_or_raises_unknown_account(engine: sa.Engine) -> None:
    grant_credits(engine, "alice", 40)
    _create(engine, [SORA_10])

    account = get_account(engine, "alice")

    assert (account.user_id, account.balance, account.held) == ("alice", 30, 10)
    assert account.updated_at.tzinfo is not None
    with pytest.raises(UnknownAccount, match="bob"):
        get_account(engine, "bob")


def test_a_grant_past_the_largest_balance_fails_and_keeps_the_balance_exact(
    engine: sa.Engine,
) -> None:
    # SQLite would turn an integer past 2**63-1 into a REAL: balances stop at 2**62.
    big = 2**62
    grant_credits(engine, "alice", big)
    before = table_snapshot(engine)

    with pytest.raises(InvalidInput, match="would take the balance over"):
        grant_credits(engine, "alice", 1)

    assert table_snapshot(engine) == before
    balance = get_account(engine, "alice").balance
    assert isinstance(balance, int) and balance == big
