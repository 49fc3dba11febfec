"""A run of a settled batch retries its retryable failures with a new reservation (SPEC 1, 4);
moderation and INVALID_INPUT failures, and a fully succeeded batch, stay exactly as they are."""

from __future__ import annotations

import pytest

from grsai_pipeline.domain.pricing import PriceTable
from grsai_pipeline.store.accounts import grant_credits
from grsai_pipeline.store.batches import create_batch
from grsai_pipeline_tests.conftest import e2e_settings
from grsai_pipeline_tests.e2e.test_fault_outcomes import run_command
from grsai_pipeline_tests.helpers import (
    assert_ledger_invariants,
    ledger_kinds,
    new_batch,
    rows,
    table_snapshot,
)

# The first reservation's three attempts fail with failure_reason "error"; the retry succeeds.
FLAKY = "a kite over dunes [sim:error,error,error,succeeded]"
BATCH = [
    {"prompt": FLAKY, "model": "sora-2"},
    {"prompt": "flagged [sim:input_moderation]", "model": "veo-flash"},
    {"prompt": "", "model": "sora-2"},
    {"prompt": "fine", "model": "veo-pro"},
]


@pytest.fixture
def env(database_url, simulator, monkeypatch, tmp_path) -> None:
    for name, value in e2e_settings(database_url, simulator.base_url, tmp_path).items():
        monkeypatch.setenv(name, value)


def tasks_by_index(engine) -> dict[int, dict]:
    return {t["batch_index"]: t for t in rows(engine, "SELECT * FROM video_tasks")}


def reservations(engine, task_id: str) -> list[tuple[str, int, int]]:
    return [
        (r["kind"], r["reservation"], r["amount"])
        for r in rows(
            engine,
            "SELECT kind, reservation, amount FROM credit_ledger"
            " WHERE video_task_id = :t ORDER BY id",
            t=task_id,
        )
    ]


def test_a_second_run_retries_only_retryable_failures_with_a_new_reservation(
    env, engine, simulator, capsys
) -> None:
    batch_id = new_batch(engine, BATCH, credits=200)
    assert run_command("run", batch_id, "--until-settled", capsys=capsys)[0] == 0
    first = tasks_by_index(engine)
    assert first[0]["status"] == "failed" and first[0]["attempts"] == 3
    settled_once = rows(engine, "SELECT * FROM batch_jobs")[0]
    assert settled_once["status"] == "settled"

    code, stderr = run_command("run", batch_id, "--until-settled", capsys=capsys)

    assert code == 0, stderr
    after = tasks_by_index(engine)
    assert after[0]["status"] == "succeeded" and after[0]["video_url"]
    assert reservations(engine, after[0]["id"]) == [
        ("reserve", 1, 10), ("refund", 1, 10), ("reserve", 2, 10), ("charge", 2, 10),
    ]  # fmt: skip
    for index in (1, 2, 3):
        assert after[index] == first[index], f"task {index} must not change"
    batch = rows(engine, "SELECT * FROM batch_jobs")[0]
    assert batch["status"] == "settled" and batch["settled_at"] > settled_once["settled_at"]
    assert batch["reserved_credits"] == settled_once["reserved_credits"] + 10
    assert simulator.simulator.stats()["submits_by_prompt"][FLAKY] == 4
    assert "flagged [sim:input_moderation]" in simulator.simulator.stats()["submits_by_prompt"]
    assert simulator.simulator.stats()["submits_by_prompt"]["flagged [sim:input_moderation]"] == 1
    assert_ledger_invariants(engine)


def test_a_retry_the_balance_cannot_cover_stays_failed_until_credits_arrive(
    env, engine, simulator, capsys
) -> None:
    # 10 credits: exactly one sora-2 reservation.
    batch_id = new_batch(engine, [{"prompt": FLAKY, "model": "sora-2"}], credits=10)
    assert run_command("run", batch_id, "--until-settled", capsys=capsys)[0] == 0
    # The refund came back; the user spends it on another batch before anyone retries.
    create_batch(engine, "alice", [{"prompt": "elsewhere", "model": "sora-2"}], PriceTable())
    before = ledger_kinds(engine, batch_id)

    assert run_command("run", batch_id, capsys=capsys)[0] == 0

    task = rows(engine, "SELECT * FROM video_tasks WHERE batch_job_id = :b", b=batch_id)[0]
    assert task["status"] == "failed"
    assert task["error_message"].startswith("INSUFFICIENT_CREDITS: a retry needs 10 credits")
    assert ledger_kinds(engine, batch_id) == before
    assert rows(engine, "SELECT status FROM batch_jobs WHERE id = :b", b=batch_id)[0] == {
        "status": "settled"
    }
    grant_credits(engine, "alice", 10)
    assert run_command("run", batch_id, "--until-settled", capsys=capsys)[0] == 0
    task = rows(engine, "SELECT * FROM video_tasks WHERE batch_job_id = :b", b=batch_id)[0]
    assert task["status"] == "succeeded"
    assert reservations(engine, task["id"])[-1] == ("charge", 2, 10)
    assert_ledger_invariants(engine)


def test_running_a_fully_succeeded_batch_again_changes_nothing(
    env, engine, simulator, capsys
) -> None:
    batch_id = new_batch(engine, [{"prompt": f"ok {i}", "model": "veo-flash"} for i in range(3)])
    assert run_command("run", batch_id, "--until-settled", capsys=capsys)[0] == 0
    before, submits = table_snapshot(engine), simulator.simulator.stats()["submit_requests"]

    assert run_command("run", batch_id, "--until-settled", capsys=capsys)[0] == 0

    assert table_snapshot(engine) == before
    assert simulator.simulator.stats()["submit_requests"] == submits
