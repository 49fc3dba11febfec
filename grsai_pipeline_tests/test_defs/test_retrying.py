"""One launch of ``retry_failed_batches`` retries exactly the batches with retryable failures,
each task at most GRSAI_MAX_BACKFILL_RETRIES times, and the retry shows in the batch (issue 24)."""

from __future__ import annotations

import json
from typing import Any

import dagster as dg

from grsai_pipeline.definitions import defs
from grsai_pipeline_tests.helpers import assert_ledger_invariants, new_batch, rows
from grsai_pipeline_tests.test_cli.cli_helpers import call_main
from grsai_pipeline_tests.test_defs.dagster_helpers import QUIET, run_batch
from grsai_pipeline_tests.test_defs.test_repolling import partition_events, repoll

FLAKY = {"prompt": "a glass tips over [sim:error]", "model": "sora-2"}
FINE = {"prompt": "a calm lake", "model": "sora-2"}
FLAGGED = {"prompt": "a riot [sim:input_moderation]", "model": "sora-2"}


def launch_retry(instance: dg.DagsterInstance) -> dg.ExecuteInProcessResult:
    """The one launch an operator makes from the UI (Jobs, retry_failed_batches)."""
    return defs.resolve_job_def("retry_failed_batches").execute_in_process(
        run_config=QUIET, instance=instance, raise_on_error=False
    )


def task_of(engine: Any, batch_id: str, index: int) -> dict[str, Any]:
    (task,) = rows(
        engine,
        "SELECT status, reservation, attempts, error_message FROM video_tasks"
        " WHERE batch_job_id = :b AND batch_index = :i",
        b=batch_id,
        i=index,
    )
    return task


def test_one_launch_retries_exactly_the_batches_with_retryable_failures_up_to_the_limit(
    pipeline_env, monkeypatch, engine, simulator, instance, capsys
) -> None:
    monkeypatch.setenv("GRSAI_MAX_BACKFILL_RETRIES", "1")
    flaky = new_batch(engine, [FINE, FLAKY], user="ann")
    moderated = new_batch(engine, [FLAGGED], user="bo")
    clean = new_batch(engine, [FINE], user="cy")
    for batch_id in (flaky, moderated, clean):
        assert run_batch(instance, batch_id, tags={"grsai/trigger": "sensor"}).success

    first = launch_retry(instance)

    assert first.success
    retried = partition_events(first)
    assert set(retried) == {("pending_tasks", flaky)}
    assert retried[("pending_tasks", flaky)]["retries_started"] == 1
    assert task_of(engine, flaky, 1)["reservation"] == 2
    assert task_of(engine, flaky, 1)["status"] == "pending"
    assert [task_of(engine, b, 0)["reservation"] for b in (flaky, moderated, clean)] == [1, 1, 1]
    # The re-polling run sends it; it fails again and the batch settles again.
    assert repoll(instance).success
    assert task_of(engine, flaky, 1)["status"] == "failed"

    second = launch_retry(instance)

    assert second.success
    marked = partition_events(second)
    assert set(marked) == {("pending_tasks", flaky)}
    assert marked[("pending_tasks", flaky)]["retries_started"] == 0
    assert marked[("pending_tasks", flaky)]["retries_used_up"] == 1
    assert launch_retry(instance).success  # the next launch finds nothing
    task = task_of(engine, flaky, 1)
    assert task["reservation"] == 2
    assert task["error_message"].endswith("(final: retried by backfill 1 time(s), the limit)")
    # The retry history, as `batch status --json` (and the API, the same model) shows it.
    shown = json.loads(call_main(["batch", "status", flaky, "--json"], capsys).out)
    assert [(t["reservation"], t["attempts"]) for t in shown["tasks"]] == [(1, 1), (2, 3)]
    assert shown["retried_by_backfill"] == 1
    settled = partition_events(repoll(instance))
    assert all(key[1] != flaky for key in settled)  # nothing left to do for it
    reserves = rows(
        engine,
        "SELECT reservation FROM credit_ledger WHERE batch_job_id = :b AND kind = 'reserve'"
        " ORDER BY reservation",
        b=flaky,
    )
    assert [r["reservation"] for r in reserves] == [1, 1, 2]
    assert_ledger_invariants(engine)
