"""The checks behind the Dagster asset checks: the money adds up, and every succeeded task
carries its video (SPEC 1, 4). They must notice when the tables disagree."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from grsai_pipeline.errors import UnknownBatch
from grsai_pipeline.store.audit import ledger_problems, succeeded_without_video
from grsai_pipeline.store.settlement import settle_batch
from grsai_pipeline_tests.helpers import new_batch
from grsai_pipeline_tests.test_store.store_support import (
    INVALID_MODEL,
    SORA_10,
    VEO_FLASH,
    execute,
    fail,
    set_task,
    succeed,
    task_ids,
)


def _settled(engine: sa.Engine) -> tuple[str, list[str]]:
    batch_id = new_batch(engine, [SORA_10, VEO_FLASH, INVALID_MODEL], credits=100)
    ids = task_ids(engine, batch_id)
    succeed(engine, ids[0])
    fail(engine, ids[1])
    settle_batch(engine, batch_id)
    return batch_id, ids


def test_a_settled_batch_has_no_ledger_problems(engine: sa.Engine) -> None:
    batch_id, _ids = _settled(engine)
    assert ledger_problems(engine, batch_id) == []


def test_an_account_that_disagrees_with_its_ledger_is_reported(engine: sa.Engine) -> None:
    batch_id, _ids = _settled(engine)
    execute(engine, "UPDATE credit_accounts SET balance = balance + 5 WHERE user_id = 'alice'")

    problems = ledger_problems(engine, batch_id)

    assert len(problems) == 1 and "balance" in problems[0] and "alice" in problems[0]


def test_settled_batch_columns_that_disagree_with_the_ledger_are_reported(
    engine: sa.Engine,
) -> None:
    batch_id, ids = _settled(engine)
    execute(engine, "UPDATE batch_jobs SET charged_credits = 0 WHERE id = :b", b=batch_id)
    set_task(engine, ids[0], status="processing")

    problems = ledger_problems(engine, batch_id)

    assert any("charged" in p for p in problems)
    assert any("pending or processing" in p for p in problems)


def test_succeeded_tasks_without_a_video_are_listed_by_index(engine: sa.Engine) -> None:
    batch_id = new_batch(engine, [SORA_10, SORA_10, SORA_10])
    ids = task_ids(engine, batch_id)
    succeed(engine, ids[0])
    set_task(engine, ids[1], status="succeeded", video_url=None)
    set_task(engine, ids[2], status="succeeded", video_url="")

    assert succeeded_without_video(engine, batch_id) == [1, 2]


def test_audits_of_an_unknown_batch_raise_unknown_batch(engine: sa.Engine) -> None:
    with pytest.raises(UnknownBatch):
        ledger_problems(engine, "no-such-batch")


def test_a_task_whose_money_breaks_paid_before_sent_is_named(engine: sa.Engine) -> None:
    # The check ledger_balances reads these: a failed, refunded task turned succeeded by hand.
    batch_id, ids = _settled(engine)
    set_task(engine, ids[1], status="succeeded", video_url="https://cdn.example.com/v.mp4")

    problems = ledger_problems(engine, batch_id)

    assert problems == [
        f"task {ids[1]} (batch {batch_id} #1): succeeded without a charge:"
        " reservation 1 was refunded"
    ]
