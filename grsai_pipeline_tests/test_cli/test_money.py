"""Money as a user meets it at the command line (SPEC 1 and 6), on both databases.

Idempotency keys on ``batch create`` and ``credits grant`` (also for two processes that send
one request at the same instant), ``credits ledger`` with its journal transactions and running
balance, ``batch list``, ``batch cancel`` and ``db verify``.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import sys
import time
import uuid
from collections.abc import Sequence
from contextlib import redirect_stderr, redirect_stdout
from multiprocessing.synchronize import Barrier
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from grsai_pipeline.store.accounts import grant_credits
from grsai_pipeline.store.settlement import settle_batch
from grsai_pipeline_tests.helpers import (
    assert_ledger_invariants,
    rows,
    table_snapshot,
    write_rows_batch,
)
from grsai_pipeline_tests.test_cli.cli_helpers import (
    CliResult,
    assert_error,
    call_main,
    use_settings,
    write_json,
)

# Default prices: sora-2 10 s = 10, veo-flash = 20.
TASKS: list[dict[str, Any]] = [
    {"prompt": "A lighthouse at dawn", "model": "sora-2", "duration": 10},
    {"prompt": "一只猫在雨中漫步", "model": "veo-flash", "aspect_ratio": "16:9"},
]
PRICE = 30
INVALID_TASK: dict[str, Any] = {
    "prompt": "A square video",
    "model": "veo-pro",
    "aspect_ratio": "4:3",
}
ROUNDS = 20
REPLAYED = "replayed"


@pytest.fixture
def cli_db(database_url: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """Commands called in this process use the test database."""
    use_settings(monkeypatch, {"GRSAI_DATABASE_URL": database_url})
    return database_url


def snapshot(engine: sa.Engine) -> dict[str, list[dict[str, Any]]]:
    """Every row of the application's tables, the idempotency keys included."""
    keys = rows(engine, "SELECT * FROM idempotency_keys ORDER BY user_id, idempotency_key")
    return table_snapshot(engine) | {"idempotency_keys": keys}


def the_batch_id(result: CliResult) -> str:
    """The batch id printed alone on stdout, as a script reads it."""
    assert result.code == 0, result
    lines = result.out_lines
    assert len(lines) == 1, result
    assert str(uuid.UUID(lines[0])) == lines[0], result
    return lines[0]


def create(
    capsys: pytest.CaptureFixture[str], file: Path, user: str, key: str | None = None
) -> CliResult:
    argv = ["batch", "create", str(file), "--user", user]
    return call_main([*argv, "--idempotency-key", key] if key else argv, capsys)


def account(engine: sa.Engine, user: str) -> tuple[int, int]:
    found = rows(engine, "SELECT balance, held FROM credit_accounts WHERE user_id = :u", u=user)
    assert len(found) == 1, found
    return found[0]["balance"], found[0]["held"]


def decoded(value: Any) -> Any:
    """A JSON column read with plain SQL: text on SQLite, decoded on PostgreSQL."""
    return json.loads(value) if isinstance(value, str) else value


def ledger_of(engine: sa.Engine, user: str) -> list[dict[str, Any]]:
    return rows(
        engine,
        "SELECT id, transaction_id, kind, amount, batch_job_id, video_task_id, reservation"
        " FROM credit_ledger WHERE user_id = :u ORDER BY id",
        u=user,
    )


def running_balances(entries: Sequence[dict[str, Any]]) -> list[tuple[int, int]]:
    """(balance, held) after each entry, by SPEC 1's four rules."""
    moves = {"grant": (1, 0), "reserve": (-1, 1), "charge": (0, -1), "refund": (1, -1)}
    balance = held = 0
    after = []
    for entry in entries:
        to_balance, to_held = moves[entry["kind"]]
        balance += to_balance * entry["amount"]
        held += to_held * entry["amount"]
        after.append((balance, held))
    return after


def table(text: str) -> tuple[list[str], list[list[str]]]:
    """A table the command printed: its header's words and each row's words."""
    lines = [line for line in text.splitlines() if line.strip()]
    assert lines, text
    return lines[0].replace("task #", "task#").split(), [line.split() for line in lines[1:]]


# 1. Two processes, one key, one instant.


def create_at_the_barrier(
    url: str, argv: list[str], out_path: str, err_path: str, barrier: Barrier
) -> None:
    """A user's process: everything imported and connected, then ``main(argv)`` the moment the
    other process is ready too; stdout and stderr to files, the exit code main's SystemExit."""
    os.environ["GRSAI_DATABASE_URL"] = url
    from grsai_pipeline.cli import main
    from grsai_pipeline.store.db import get_engine

    with get_engine(url).connect():  # the driver loaded, a connection in the pool
        pass
    code: object = "main returned instead of exiting"
    with (
        open(out_path, "w", encoding="utf-8") as out,
        open(err_path, "w", encoding="utf-8") as err,
        redirect_stdout(out),
        redirect_stderr(err),
    ):
        barrier.wait(timeout=60)
        try:
            main(argv)
        except SystemExit as exc:
            code = exc.code
    sys.exit(code if isinstance(code, int) else 99)


def race(url: str, argv: list[str], folder: Path, name: str) -> list[CliResult]:
    """Two processes run ``argv`` at the same instant; their results."""
    context = mp.get_context("fork")
    barrier = context.Barrier(2)
    paths = [(folder / f"{name}-{i}.out", folder / f"{name}-{i}.err") for i in range(2)]
    processes = [
        context.Process(target=create_at_the_barrier, args=(url, argv, str(out), str(err), barrier))
        for out, err in paths
    ]
    try:
        for process in processes:
            process.start()
        for process in processes:
            process.join(timeout=60)
        assert all(process.exitcode is not None for process in processes), f"{name}: hung"
    finally:
        for process in processes:
            if process.is_alive():
                process.kill()
                process.join(timeout=10)
    return [
        CliResult(int(process.exitcode or 0), out.read_text("utf-8"), err.read_text("utf-8"))
        for process, (out, err) in zip(processes, paths, strict=True)
    ]


@pytest.mark.slow
def test_two_processes_creating_with_one_key_at_the_same_instant_make_one_batch(
    database_url: str,
    engine: sa.Engine,
    tmp_path: Path,
    record_property: Any,
) -> None:
    user = "racer"
    grant_credits(engine, user, 1_000_000)
    batch_file = write_json(tmp_path / "batch.json", TASKS)
    started = time.perf_counter()

    for round_ in range(ROUNDS):
        key = f"retry-{round_}-{uuid.uuid4().hex[:8]}"
        argv = ["batch", "create", str(batch_file), "--user", user, "--idempotency-key", key]

        results = race(database_url, argv, tmp_path, f"round{round_}")

        for result in results:
            assert result.code == 0, f"round {round_}: {result}"
        batch_ids = {the_batch_id(result) for result in results}
        assert len(batch_ids) == 1, f"round {round_}: two batches {batch_ids}"
        (batch_id,) = batch_ids
        assert sum(REPLAYED in result.err for result in results) == 1, results
        stored = rows(
            engine,
            "SELECT response FROM idempotency_keys WHERE user_id = :u AND idempotency_key = :k",
            u=user,
            k=key,
        )
        assert len(stored) == 1 and decoded(stored[0]["response"])["batch_id"] == batch_id
        batches = rows(engine, "SELECT id FROM batch_jobs WHERE user_id = :u", u=user)
        assert len(batches) == round_ + 1 and batch_id in {b["id"] for b in batches}
        assert rows(engine, "SELECT COUNT(*) AS n FROM video_tasks")[0]["n"] == (round_ + 1) * 2
        reserves = rows(
            engine,
            "SELECT t.id, COUNT(l.id) AS n FROM video_tasks t LEFT JOIN credit_ledger l"
            " ON l.video_task_id = t.id AND l.kind = 'reserve'"
            " WHERE t.batch_job_id = :b GROUP BY t.id",
            b=batch_id,
        )
        assert sorted(r["n"] for r in reserves) == [1, 1], reserves
        spent = (round_ + 1) * PRICE
        assert account(engine, user) == (1_000_000 - spent, spent), f"round {round_}"

    elapsed = time.perf_counter() - started
    record_property("figures", f"two-process idempotency race: {ROUNDS} rounds, {elapsed:.1f} s")
    assert_ledger_invariants(engine)


@pytest.mark.slow
def test_a_racing_retry_replays_even_when_the_balance_covers_one_batch_only(
    database_url: str, engine: sa.Engine, tmp_path: Path
) -> None:
    """The retry of a request that took the user's last credits is still that request: it
    replays the answer, it is not refused for want of credits."""
    batch_file = write_json(tmp_path / "batch.json", TASKS)

    for round_ in range(5):
        user = f"exact-{round_}"
        grant_credits(engine, user, PRICE)
        argv = ["batch", "create", str(batch_file), "--user", user, "--idempotency-key", "k"]

        results = race(database_url, argv, tmp_path, f"exact{round_}")

        for result in results:
            assert result.code == 0, f"round {round_}: {result}"
        assert len({the_batch_id(result) for result in results}) == 1
        assert account(engine, user) == (0, PRICE)
    assert_ledger_invariants(engine)


# 2-4. Replays, conflicts, keys per user.


def test_the_key_with_another_file_exits_2_naming_the_key_and_writes_nothing(
    cli_db: str, engine: sa.Engine, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    grant_credits(engine, "alice", 1_000)
    first = write_json(tmp_path / "first.json", TASKS)
    the_batch_id(create(capsys, first, "alice", "order-42"))
    assert (
        call_main(["credits", "grant", "alice", "5", "--idempotency-key", "gift"], capsys).code == 0
    )
    changed = write_json(tmp_path / "changed.json", [TASKS[0], {**TASKS[1], "prompt": "A dog"}])
    fewer = write_json(tmp_path / "fewer.json", TASKS[:1])
    before = snapshot(engine)

    for file, key in ((changed, "order-42"), (fewer, "order-42"), (first, "gift")):
        result = create(capsys, file, "alice", key)

        assert_error(result, 2, "--idempotency-key", key)
        assert result.out == "", result
    assert snapshot(engine) == before


def test_the_key_with_the_same_file_replays_the_first_batch_and_writes_nothing(
    cli_db: str, engine: sa.Engine, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    grant_credits(engine, "alice", 1_000)
    batch_file = write_json(tmp_path / "batch.json", [*TASKS, INVALID_TASK])
    first = create(capsys, batch_file, "alice", "order-7")
    batch_id = the_batch_id(first)
    assert REPLAYED not in first.err
    before = snapshot(engine)
    # The same tasks, written out another way (indentation, key order), are the same request.
    rewritten = tmp_path / "rewritten.json"
    rewritten.write_text(
        json.dumps([dict(reversed(task.items())) for task in [*TASKS, INVALID_TASK]], indent=2),
        encoding="utf-8",
    )

    again = create(capsys, batch_file, "alice", "order-7")
    once_more = create(capsys, rewritten, "alice", "order-7")

    for replay in (again, once_more):
        assert the_batch_id(replay) == batch_id
        assert len(replay.err_lines) == 1 and REPLAYED in replay.err, replay
    assert snapshot(engine) == before
    assert account(engine, "alice") == (1_000 - PRICE, PRICE)


def test_a_grant_with_a_key_happens_once_and_its_replay_prints_the_first_answer(
    cli_db: str, engine: sa.Engine, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    grant = ["credits", "grant", "alice", "50", "--idempotency-key", "topup-1"]
    first = call_main(grant, capsys)
    assert first.code == 0, first
    # The account moves on before the retry arrives.
    the_batch_id(create(capsys, write_json(tmp_path / "b.json", TASKS), "alice"))
    before = snapshot(engine)

    again = call_main(grant, capsys)
    other_amount = call_main(
        ["credits", "grant", "alice", "60", "--idempotency-key", "topup-1"], capsys
    )

    assert again.code == 0, again
    assert again.out == first.out and len(first.out_lines) == 1, (first, again)
    assert_error(other_amount, 2, "--idempotency-key", "topup-1")
    assert other_amount.out == ""
    assert snapshot(engine) == before
    grants = rows(engine, "SELECT amount FROM credit_ledger WHERE kind = 'grant'")
    assert [g["amount"] for g in grants] == [50]
    assert account(engine, "alice") == (50 - PRICE, PRICE)


def test_a_replayed_grant_says_so_on_stderr_like_a_replayed_batch(
    cli_db: str, engine: sa.Engine, capsys: pytest.CaptureFixture[str]
) -> None:
    grant = ["credits", "grant", "alice", "50", "--idempotency-key", "topup-1"]
    first = call_main(grant, capsys)

    again = call_main(grant, capsys)

    assert first.code == 0 and REPLAYED not in first.err, first
    assert again.code == 0, again
    assert REPLAYED in again.err, again


def test_keys_are_per_user(
    cli_db: str, engine: sa.Engine, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    batch_file = write_json(tmp_path / "batch.json", TASKS)
    for user in ("alice", "bob"):
        granted = call_main(["credits", "grant", user, "100", "--idempotency-key", "g"], capsys)
        assert granted.code == 0, granted

    alice_batch = the_batch_id(create(capsys, batch_file, "alice", "k"))
    bob_batch = the_batch_id(create(capsys, batch_file, "bob", "k"))

    assert alice_batch != bob_batch
    owners = rows(engine, "SELECT id, user_id FROM batch_jobs ORDER BY user_id")
    assert owners == [{"id": alice_batch, "user_id": "alice"}, {"id": bob_batch, "user_id": "bob"}]
    assert account(engine, "alice") == account(engine, "bob") == (100 - PRICE, PRICE)
    assert len(rows(engine, "SELECT * FROM idempotency_keys")) == 4
    assert_ledger_invariants(engine)


# 5. The ledger.


def test_ledger_shows_every_entry_its_transaction_and_the_running_balance(
    cli_db: str, engine: sa.Engine, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert call_main(["credits", "grant", "alice", "100"], capsys).code == 0
    first = the_batch_id(
        create(capsys, write_json(tmp_path / "a.json", [*TASKS, INVALID_TASK]), "alice")
    )
    assert call_main(["credits", "grant", "alice", "50"], capsys).code == 0
    second = the_batch_id(create(capsys, write_json(tmp_path / "b.json", TASKS[:1]), "alice"))
    assert call_main(["credits", "grant", "bob", "7"], capsys).code == 0
    assert call_main(["batch", "cancel", second], capsys).code == 0
    stored = ledger_of(engine, "alice")
    after = running_balances(stored)

    text = call_main(["credits", "ledger", "alice"], capsys)
    as_json = call_main(["credits", "ledger", "alice", "--json"], capsys)
    shown = call_main(["credits", "show", "alice", "--json"], capsys)

    assert text.code == 0 and text.err == "", text
    header, lines = table(text.out)
    assert {"entry", "transaction", "kind", "amount", "balance", "held"} <= set(header)
    printed = [dict(zip(header, line, strict=True)) for line in lines]
    assert [int(p["entry"]) for p in printed] == [e["id"] for e in stored]  # newest last
    for line, entry, (balance, held) in zip(printed, stored, after, strict=True):
        assert entry["transaction_id"].startswith(line["transaction"]), (line, entry)
        assert (line["kind"], int(line["amount"])) == (entry["kind"], entry["amount"])
        assert (int(line["balance"]), int(line["held"])) == (balance, held)

    assert as_json.code == 0 and len(as_json.out_lines) == 1, as_json
    entries = json.loads(as_json.out)
    assert [e["id"] for e in entries] == [e["id"] for e in stored]
    assert [e["transaction_id"] for e in entries] == [e["transaction_id"] for e in stored]
    assert [(e["balance"], e["held"]) for e in entries] == after
    account_now = json.loads(shown.out)
    assert (entries[-1]["balance"], entries[-1]["held"]) == (
        account_now["balance"],
        account_now["held"],
    )
    # The journal: one transaction per money movement.
    kinds = [(e["kind"], e["batch_job_id"]) for e in entries]
    assert kinds == [
        ("grant", None),
        ("reserve", first),
        ("reserve", first),
        ("grant", None),
        ("reserve", second),
        ("refund", second),
    ]
    transactions = [e["transaction_id"] for e in entries]
    assert transactions[1] == transactions[2]  # one batch's creation
    assert len(set(transactions)) == 5  # each grant, creation and the cancel its own


def test_ledger_of_one_batch_shows_only_its_entries_with_the_account_balance(
    cli_db: str, engine: sa.Engine, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert call_main(["credits", "grant", "alice", "100"], capsys).code == 0
    first = the_batch_id(create(capsys, write_json(tmp_path / "a.json", TASKS), "alice"))
    second = the_batch_id(create(capsys, write_json(tmp_path / "b.json", TASKS[:1]), "alice"))
    whole = json.loads(call_main(["credits", "ledger", "alice", "--json"], capsys).out)

    as_json = call_main(["credits", "ledger", "alice", "--batch", first, "--json"], capsys)
    text = call_main(["credits", "ledger", "alice", "--batch", second], capsys)

    assert as_json.code == 0, as_json
    assert json.loads(as_json.out) == [e for e in whole if e["batch_job_id"] == first]
    assert len(json.loads(as_json.out)) == 2
    assert text.code == 0, text
    header, lines = table(text.out)
    printed = [dict(zip(header, line, strict=True)) for line in lines]
    assert [int(p["entry"]) for p in printed] == [
        e["id"] for e in whole if e["batch_job_id"] == second
    ]
    assert [int(p["balance"]) for p in printed] == [100 - PRICE - 10]


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["credits", "ledger", "nobody"], ["nobody"]),
        (["credits", "ledger", "alice", "--batch", "BOBS"], ["BOBS"]),
        (["credits", "ledger", "alice", "--batch", "no-such-batch"], ["no-such-batch"]),
    ],
)
def test_ledger_of_an_unknown_user_or_another_users_batch_exits_2(
    argv: list[str],
    words: list[str],
    cli_db: str,
    engine: sa.Engine,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    grant_credits(engine, "alice", 100)
    grant_credits(engine, "bob", 100)
    bobs = the_batch_id(create(capsys, write_json(tmp_path / "b.json", TASKS), "bob"))
    argv = [bobs if arg == "BOBS" else arg for arg in argv]
    words = [bobs if word == "BOBS" else word for word in words]

    result = call_main(argv, capsys)

    assert_error(result, 2, *words)
    assert result.out == ""


# 6. Listing batches.


def test_batch_list_is_newest_first_with_counts_and_filters(
    cli_db: str, engine: sa.Engine, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    grant_credits(engine, "alice", 1_000)
    grant_credits(engine, "bob", 1_000)
    mixed = write_json(tmp_path / "mixed.json", [*TASKS, INVALID_TASK])
    oldest = the_batch_id(create(capsys, mixed, "alice"))
    bobs = the_batch_id(create(capsys, write_json(tmp_path / "one.json", TASKS[:1]), "bob"))
    newest = the_batch_id(create(capsys, write_json(tmp_path / "two.json", TASKS), "alice"))
    assert call_main(["batch", "cancel", bobs], capsys).code == 0

    def listed(*options: str) -> list[dict[str, Any]]:
        result = call_main(["batch", "list", *options, "--json"], capsys)
        assert result.code == 0 and len(result.out_lines) == 1, result
        return json.loads(result.out)

    everything = listed()
    assert [b["batch_id"] for b in everything] == [newest, bobs, oldest]
    by_id = {b["batch_id"]: b for b in everything}
    assert by_id[oldest]["counts"] == {"pending": 2, "processing": 0, "succeeded": 0, "failed": 1}
    assert by_id[bobs]["counts"] == {"pending": 0, "processing": 0, "succeeded": 0, "failed": 1}
    assert (by_id[bobs]["status"], by_id[bobs]["user_id"]) == ("settled", "bob")
    assert by_id[oldest]["reserved_credits"] == PRICE
    assert [b["batch_id"] for b in listed("--status", "settled")] == [bobs]
    assert [b["batch_id"] for b in listed("--status", "pending")] == [newest, oldest]
    assert [b["batch_id"] for b in listed("--user", "alice")] == [newest, oldest]
    assert [b["batch_id"] for b in listed("--user", "bob", "--status", "pending")] == []
    assert listed("--user", "nobody") == []

    text = call_main(["batch", "list"], capsys)
    assert text.code == 0 and text.err == "", text
    header, lines = table(text.out)
    assert header[-7:] == [
        "pending", "processing", "succeeded", "failed", "reserved", "charged", "refunded",
    ]  # fmt: skip
    assert [line[0] for line in lines] == [newest, bobs, oldest]
    assert lines[2][-7:] == ["2", "0", "0", "1", str(PRICE), "0", "0"]
    only_bob = call_main(["batch", "list", "--user", "bob"], capsys)
    assert [line[0] for line in table(only_bob.out)[1]] == [bobs]


def test_batch_list_with_an_unknown_status_exits_2(
    cli_db: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert_error(call_main(["batch", "list", "--status", "done"], capsys), 2, "--status")


# 7. Cancelling a batch.


def test_cancel_of_a_pending_batch_fails_and_refunds_every_task_in_one_transaction(
    cli_db: str, engine: sa.Engine, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    grant_credits(engine, "alice", 100)
    tasks = [*TASKS, {"prompt": "A slow pan", "model": "sora-2", "duration": 15}, INVALID_TASK]
    batch_id = the_batch_id(create(capsys, write_json(tmp_path / "b.json", tasks), "alice"))
    reserved = PRICE + 15
    assert account(engine, "alice") == (100 - reserved, reserved)

    result = call_main(["batch", "cancel", batch_id], capsys)

    assert result.code == 0 and result.err == "", result
    assert batch_id in result.out and "cancel" in result.out
    stored = rows(
        engine,
        "SELECT batch_index, status, error_message FROM video_tasks"
        " WHERE batch_job_id = :b ORDER BY batch_index",
        b=batch_id,
    )
    assert [t["status"] for t in stored] == ["failed"] * 4
    for task in stored[:3]:
        assert task["error_message"].startswith("CANCELLED:"), task
    assert stored[3]["error_message"].startswith("INVALID_INPUT:"), stored[3]  # kept its reason
    entries = rows(
        engine,
        "SELECT kind, amount, video_task_id, reservation, transaction_id FROM credit_ledger"
        " WHERE batch_job_id = :b ORDER BY id",
        b=batch_id,
    )
    reserves = [e for e in entries if e["kind"] == "reserve"]
    refunds = [e for e in entries if e["kind"] == "refund"]
    assert len(entries) == 6 and len(reserves) == len(refunds) == 3
    assert len({e["transaction_id"] for e in refunds}) == 1  # one journal transaction
    assert refunds[0]["transaction_id"] != reserves[0]["transaction_id"]
    assert sorted((e["video_task_id"], e["reservation"], e["amount"]) for e in refunds) == sorted(
        (e["video_task_id"], e["reservation"], e["amount"]) for e in reserves
    )
    assert account(engine, "alice") == (100, 0)
    batch = rows(engine, "SELECT * FROM batch_jobs WHERE id = :b", b=batch_id)[0]
    assert batch["status"] == "settled" and batch["settled_at"] is not None
    assert (batch["reserved_credits"], batch["charged_credits"], batch["refunded_credits"]) == (
        reserved,
        0,
        reserved,
    )
    status = json.loads(call_main(["batch", "status", batch_id, "--json"], capsys).out)
    assert status["status"] == "settled" and status["counts"]["failed"] == 4
    assert_ledger_invariants(engine)


def test_cancel_again_or_of_a_settled_batch_changes_nothing_and_says_so(
    cli_db: str, engine: sa.Engine, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    grant_credits(engine, "alice", 1_000)
    batch_file = write_json(tmp_path / "b.json", TASKS)
    cancelled = the_batch_id(create(capsys, batch_file, "alice"))
    assert call_main(["batch", "cancel", cancelled], capsys).code == 0
    # Another batch runs to the end (its tasks succeed as a runner records them), and settles.
    finished = the_batch_id(create(capsys, batch_file, "alice"))
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "UPDATE video_tasks SET status = 'succeeded', progress = 100,"
                " video_url = 'https://example.com/v.mp4' WHERE batch_job_id = :b"
            ),
            {"b": finished},
        )
    assert settle_batch(engine, finished).settled
    before = snapshot(engine)

    again = call_main(["batch", "cancel", cancelled], capsys)
    settled = call_main(["batch", "cancel", finished], capsys)

    for result, word in ((again, "already cancelled"), (settled, "already settled")):
        assert result.code == 0, result
        assert "nothing to cancel" in result.out and word in result.out, result
    assert snapshot(engine) == before
    assert rows(engine, "SELECT charged_credits FROM batch_jobs WHERE id = :b", b=finished) == [
        {"charged_credits": PRICE}
    ]


def test_cancel_leaves_a_task_at_the_api_to_finish_and_settle_as_usual(
    cli_db: str, engine: sa.Engine, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    grant_credits(engine, "alice", 100)
    batch_id = the_batch_id(create(capsys, write_json(tmp_path / "b.json", TASKS), "alice"))
    with engine.begin() as conn:  # task 0 was sent; the API is making it
        conn.execute(
            sa.text(
                "UPDATE video_tasks SET status = 'processing', grsai_task_id = 'remote-1',"
                " attempts = 1 WHERE batch_job_id = :b AND batch_index = 0"
            ),
            {"b": batch_id},
        )

    result = call_main(["batch", "cancel", batch_id], capsys)

    assert result.code == 0, result
    assert "1 task(s) at the API" in result.out, result
    stored = rows(
        engine,
        "SELECT status, error_message FROM video_tasks WHERE batch_job_id = :b"
        " ORDER BY batch_index",
        b=batch_id,
    )
    assert stored[0] == {"status": "processing", "error_message": None}
    assert stored[1]["status"] == "failed" and stored[1]["error_message"].startswith("CANCELLED:")
    assert account(engine, "alice") == (100 - 10, 10)  # veo-flash's 20 refunded
    assert rows(engine, "SELECT status FROM batch_jobs")[0]["status"] != "settled"

    with engine.begin() as conn:  # the API finishes it
        conn.execute(
            sa.text(
                "UPDATE video_tasks SET status = 'succeeded', progress = 100,"
                " video_url = 'https://example.com/v.mp4' WHERE grsai_task_id = 'remote-1'"
            )
        )
    assert settle_batch(engine, batch_id).settled

    assert account(engine, "alice") == (90, 0)
    batch = rows(engine, "SELECT * FROM batch_jobs")[0]
    assert (batch["status"], batch["charged_credits"], batch["refunded_credits"]) == (
        "settled",
        10,
        20,
    )
    assert_ledger_invariants(engine)


def test_cancel_of_an_unknown_batch_exits_2_naming_it(
    cli_db: str, engine: sa.Engine, capsys: pytest.CaptureFixture[str]
) -> None:
    grant_credits(engine, "alice", 100)
    before = snapshot(engine)
    unknown = str(uuid.uuid4())

    result = call_main(["batch", "cancel", unknown], capsys)

    assert_error(result, 2, unknown)
    assert result.out == ""
    assert snapshot(engine) == before


# 8. db verify.


def _some_history(
    engine: sa.Engine, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> dict[str, str]:
    """Two users, an open batch and a cancelled (settled) one; their ids."""
    grant_credits(engine, "alice", 100)
    grant_credits(engine, "bob", 5)
    batch_file = write_json(tmp_path / "b.json", TASKS)
    open_batch = the_batch_id(create(capsys, batch_file, "alice"))
    settled = the_batch_id(create(capsys, batch_file, "alice"))
    assert call_main(["batch", "cancel", settled], capsys).code == 0
    return {"open": open_batch, "settled": settled}


def test_db_verify_on_a_clean_database_exits_0(
    cli_db: str, engine: sa.Engine, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    empty = call_main(["db", "verify"], capsys)
    _some_history(engine, tmp_path, capsys)
    before = snapshot(engine)

    result = call_main(["db", "verify"], capsys)

    for done in (empty, result):
        assert done.code == 0 and done.err == "", done
        assert len(done.out_lines) == 1, done
    assert snapshot(engine) == before


@pytest.mark.parametrize("column", ["balance", "held"])
def test_db_verify_names_an_account_whose_column_was_changed_by_hand(
    column: str,
    cli_db: str,
    engine: sa.Engine,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    _some_history(engine, tmp_path, capsys)
    with engine.begin() as conn:
        conn.execute(
            sa.text(f"UPDATE credit_accounts SET {column} = {column} + 1 WHERE user_id = :u"),
            {"u": "alice"},
        )

    result = call_main(["db", "verify"], capsys)

    assert_error(result, 1, "alice")
    named = [line for line in result.out_lines if "alice" in line]
    assert len(named) == 1 and column in named[0], result
    assert "bob" not in result.out and "batch" not in result.out, result


def test_db_verify_names_each_batch_whose_charged_credits_were_changed_by_hand(
    cli_db: str, engine: sa.Engine, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    batches = _some_history(engine, tmp_path, capsys)
    clean = call_main(["db", "verify"], capsys)
    assert clean.code == 0, clean
    with engine.begin() as conn:
        for batch_id in batches.values():
            conn.execute(
                sa.text(
                    "UPDATE batch_jobs SET charged_credits = charged_credits + 1 WHERE id = :b"
                ),
                {"b": batch_id},
            )

    result = call_main(["db", "verify"], capsys)

    assert_error(result, 1)
    for batch_id in batches.values():
        assert any(batch_id in line for line in result.out_lines), (batch_id, result)
    assert "account" not in result.out, result  # the accounts still add up


def _first_task(engine: sa.Engine, batch_id: str) -> str:
    found = rows(
        engine, "SELECT id FROM video_tasks WHERE batch_job_id = :b AND batch_index = 0", b=batch_id
    )
    return str(found[0]["id"])


def _succeeded_without_a_charge(engine: sa.Engine, batches: dict[str, str]) -> str:
    # A task of the cancelled (refunded, settled) batch turned succeeded by hand.
    task_id = _first_task(engine, batches["settled"])
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "UPDATE video_tasks SET status = 'succeeded', video_url = 'https://v' WHERE id = :t"
            ),
            {"t": task_id},
        )
    return task_id


def _reservation_never_closed(engine: sa.Engine, batches: dict[str, str]) -> str:
    # A second reservation of a settled batch's failed task, written by hand and never closed
    # (the account moved with it, so the accounts still add up).
    task_id = _first_task(engine, batches["settled"])
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO credit_ledger (user_id, batch_job_id, video_task_id, kind, amount,"
                " reservation, transaction_id, created_at) VALUES ('alice', :b, :t, 'reserve',"
                " 10, 2, 'by-hand', CURRENT_TIMESTAMP)"
            ),
            {"b": batches["settled"], "t": task_id},
        )
        conn.execute(
            sa.text(
                "UPDATE credit_accounts SET balance = balance - 10, held = held + 10"
                " WHERE user_id = 'alice'"
            )
        )
    return task_id


def _sent_without_a_reserve(engine: sa.Engine, batches: dict[str, str]) -> str:
    # A batch a web app wrote as rows, one task of it sent to the API with no reserve (what the
    # pipeline did before issue 21).
    batch_id = write_rows_batch(engine, "alice", [{"prompt": "free ride", "model": "sora-2"}])
    task_id = _first_task(engine, batch_id)
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "UPDATE video_tasks SET status = 'processing', grsai_task_id = 'remote-1',"
                " price = 10, priced_at = created_at WHERE id = :t"
            ),
            {"t": task_id},
        )
    return task_id


@pytest.mark.parametrize(
    "fault", [_succeeded_without_a_charge, _reservation_never_closed, _sent_without_a_reserve]
)
def test_db_verify_names_a_task_that_was_not_paid_for_as_it_should_be(
    fault: Any,
    cli_db: str,
    engine: sa.Engine,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    batches = _some_history(engine, tmp_path, capsys)
    assert call_main(["db", "verify"], capsys).code == 0
    task_id = fault(engine, batches)

    result = call_main(["db", "verify"], capsys)

    assert_error(result, 1)
    assert any(line.startswith(f"task {task_id} ") for line in result.out_lines), result
