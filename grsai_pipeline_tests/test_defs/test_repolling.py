"""The re-polling run: one run follows many open batches and reports each as its own partition."""

from __future__ import annotations

import math
import sys
import threading
import time
import traceback
from typing import Any

import dagster as dg
import pytest
import sqlalchemy as sa

from grsai_pipeline.config import load_settings
from grsai_pipeline.definitions import defs
from grsai_pipeline.defs.metadata import engine_metadata
from grsai_pipeline.dev.simulator import SimulatorServer
from grsai_pipeline.engine.loop import Until
from grsai_pipeline.engine.report import EngineReport
from grsai_pipeline.engine.work import batch_worker
from grsai_pipeline.store.db import get_engine
from grsai_pipeline.store.settlement import settle_batch
from grsai_pipeline_tests.helpers import assert_ledger_invariants, ledger_kinds, new_batch, rows
from grsai_pipeline_tests.test_defs.dagster_helpers import materializations, run_batch

# What the engine of a batch's own run reports of itself (and ``now_<outcome>`` counts).
ENGINE_FIELDS = frozenset(engine_metadata(EngineReport()))
QUIET = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}


def repoll(
    instance: dg.DagsterInstance, budget_s: float = 20, linger_s: float = 0
) -> dg.ExecuteInProcessResult:
    op_config = {"budget_s": budget_s, "linger_s": linger_s}
    config = {"ops": {"repoll_open_batches_op": {"config": op_config}}}
    return defs.resolve_job_def("repoll_open_batches").execute_in_process(
        run_config=config | QUIET, instance=instance, raise_on_error=False
    )


def partition_events(result: dg.ExecuteInProcessResult) -> dict[tuple[str, str], dict[str, Any]]:
    """Metadata of the last materialization of each (asset, partition) in the run."""
    found = {}
    for event in result.get_asset_materialization_events():
        materialization = event.event_specific_data.materialization  # type: ignore[union-attr]
        key = (materialization.asset_key.to_user_string(), materialization.partition)
        found[key] = {k: v.value for k, v in materialization.metadata.items()}
    return found


def test_one_run_settles_every_open_batch_and_reports_each_partition(
    pipeline_env: dict[str, str], engine: Any, simulator: SimulatorServer, instance: Any
) -> None:
    users = ["ana", "ben", "cho"]
    batches = [
        new_batch(engine, [{"prompt": f"{u} {i}", "model": "veo-flash"} for i in range(3)], user=u)
        for u in users
    ]
    batches.append(
        new_batch(engine, [{"prompt": "flagged [sim:input_moderation]", "model": "sora-2"}])
    )
    # Two batches already at the API (their own runs ended early), two never submitted.
    settings = load_settings()
    for batch_id in batches[:2]:
        db = get_engine(settings.database_url)
        with batch_worker(db, settings, "earlier-run", batch_id) as worker:
            worker.run(Until.SUBMITTED, math.inf)

    result = repoll(instance)

    assert result.success
    events = partition_events(result)
    for batch_id in batches:
        assert rows(engine, "SELECT status FROM batch_jobs WHERE id = :b", b=batch_id) == [
            {"status": "settled"}
        ]
        polled = events[("polled_results", batch_id)]
        settled = events[("settled_ledger", batch_id)]
        assert polled["tasks_pending"] == polled["tasks_processing"] == 0
        assert (
            settled["credits_reserved"] == settled["credits_charged"] + settled["credits_refunded"]
        )
    assert events[("settled_ledger", batches[0])]["credits_charged"] == 3 * 20
    assert events[("settled_ledger", batches[3])]["credits_refunded"] == 10
    assert ledger_kinds(engine, batches[3]) == {"reserve": 1, "refund": 1}
    checks = {(e.check_name, e.partition): e.passed for e in result.get_asset_check_evaluations()}
    for batch_id in batches:
        assert checks[("ledger_balances", batch_id)] is True
        assert checks[("succeeded_tasks_have_video_url", batch_id)] is True
    # The moderated batch warns; the others do not. Each shows its user.
    assert [checks[("all_tasks_succeeded", b)] for b in batches] == [True, True, True, False]
    assert [events[("settled_ledger", b)]["user_id"] for b in batches[:3]] == users
    assert "input_moderation" in events[("settled_ledger", batches[3])]["failures_by_reason"]
    assert set(instance.get_dynamic_partitions("batches")) == set(batches)
    # The UI's partition page reads the same records.
    record = instance.get_latest_materialization_event(dg.AssetKey("settled_ledger"))
    assert record is not None and record.dagster_event.partition in batches
    assert_ledger_invariants(engine)


def test_a_batch_whose_own_run_is_started_but_not_working_is_followed_all_the_same(
    pipeline_env: dict[str, str], engine: Any, simulator: SimulatorServer, instance: Any
) -> None:
    # Who works on a task is decided per task in the database, never from Dagster's run state:
    # a started (or queued, slow, dead) run of a batch holds none of its tasks back.
    mine = new_batch(engine, [{"prompt": "mine", "model": "sora-2"}])
    theirs = new_batch(engine, [{"prompt": "theirs", "model": "sora-2"}])
    job = defs.resolve_job_def("batch_pipeline")
    run = instance.create_run_for_job(job, tags={"dagster/partition": theirs})
    instance.handle_run_event(
        run.run_id,
        dg.DagsterEvent(
            event_type_value=dg.DagsterEventType.RUN_START.value, job_name=job.name, message="x"
        ),
    )

    result = repoll(instance, budget_s=5)

    assert result.success
    touched = {partition for _, partition in partition_events(result)}
    assert touched == {mine, theirs}
    assert simulator.simulator.stats()["submits_by_prompt"] == {"mine": 1, "theirs": 1}
    assert rows(engine, "SELECT status FROM video_tasks WHERE batch_job_id = :b", b=theirs) == [
        {"status": "succeeded"}
    ]


@pytest.mark.parametrize("key", [None, "sk-wrong"])
def test_a_bad_key_fails_the_run_and_no_task(
    pipeline_env: dict[str, str],
    engine: Any,
    simulator: SimulatorServer,
    instance: Any,
    monkeypatch: pytest.MonkeyPatch,
    key: str | None,
) -> None:
    batch_id = new_batch(engine, [{"prompt": "a", "model": "sora-2"}])
    if key is None:
        monkeypatch.delenv("GRSAI_API_KEY")
    else:
        monkeypatch.setenv("GRSAI_API_KEY", key)

    result = repoll(instance, budget_s=5)

    assert not result.success
    failure = next(e for e in result.all_events if e.is_step_failure)
    description = failure.step_failure_data.user_failure_data.description  # type: ignore[union-attr]
    assert "GRSAI_API_KEY" in description
    assert rows(engine, "SELECT status FROM video_tasks WHERE batch_job_id = :b", b=batch_id) == [
        {"status": "pending"}
    ]


def test_a_settlement_whose_event_was_lost_is_reported_by_the_next_run(
    pipeline_env: dict[str, str], engine: Any, simulator: SimulatorServer, instance: Any
) -> None:
    # The batch's run followed it to the end and committed the settlement, then died before
    # writing the settled_ledger event (a kill -9 between the two).
    lost = new_batch(engine, [{"prompt": "lost", "model": "sora-2"}])
    settings = load_settings()
    db = get_engine(settings.database_url)
    with batch_worker(db, settings, "killed-run", lost) as worker:
        worker.run(Until.FINAL, 20)
    assert settle_batch(db, lost).settled
    instance.add_dynamic_partitions("batches", [lost])
    assert lost not in instance.get_materialized_partitions(dg.AssetKey("settled_ledger"))

    result = repoll(instance, budget_s=2)

    assert result.success
    events = partition_events(result)
    assert events[("settled_ledger", lost)]["settlement"] == "settled"
    checks = {
        (e.check_name, e.passed)
        for e in result.get_asset_check_evaluations()
        if e.partition == lost  # type: ignore[attr-defined]
    }
    assert {("ledger_balances", True), ("all_tasks_succeeded", True)} <= checks
    # Reported once: the next run finds it and writes nothing more about it.
    again = repoll(instance, budget_s=2)
    assert ("settled_ledger", lost) not in partition_events(again)


def test_a_batch_whose_own_run_has_not_started_is_followed_meanwhile(
    pipeline_env: dict[str, str], engine: Any, simulator: SimulatorServer, instance: Any
) -> None:
    waiting = new_batch(engine, [{"prompt": "queued behind others", "model": "sora-2"}])
    job = defs.resolve_job_def("batch_pipeline")
    # Created, not started: how a run waits behind others in the run queue, as far as this goes.
    queued = instance.create_run_for_job(job, tags={"dagster/partition": waiting})
    assert instance.get_run_by_id(queued.run_id).status == dg.DagsterRunStatus.NOT_STARTED

    result = repoll(instance, budget_s=10)

    assert result.success
    assert ("settled_ledger", waiting) in partition_events(result)
    assert rows(engine, "SELECT status FROM batch_jobs WHERE id = :b", b=waiting) == [
        {"status": "settled"}
    ]


def test_with_nothing_open_the_run_stays_up_and_sends_a_new_batch_within_seconds(
    pipeline_env: dict[str, str], engine: Any, simulator: SimulatorServer, instance: Any
) -> None:
    # The next batch waits neither for the sensor's tick nor for a run to start (SPEC 4).
    results: list[dg.ExecuteInProcessResult] = []
    started = time.monotonic()
    runner = threading.Thread(target=lambda: results.append(repoll(instance, 30, linger_s=8)))
    runner.start()
    time.sleep(3)
    batch_id = new_batch(engine, [{"prompt": "late arrival", "model": "veo-flash"}])
    created = time.monotonic()

    def sent() -> bool:
        found = rows(engine, "SELECT status FROM video_tasks WHERE batch_job_id = :b", b=batch_id)
        return found[0]["status"] != "pending"

    while not sent():
        assert time.monotonic() - created < 4, "the lingering run did not send the new batch"
        time.sleep(0.05)
    runner.join(timeout=60)
    assert not runner.is_alive(), f"the run is still up after 60 s:\n{_stacks()}"
    assert results and results[0].success
    assert ("settled_ledger", batch_id) in partition_events(results[0])
    # It went on for its linger after the batch settled, and no longer: far within its budget.
    assert time.monotonic() - started < 25


def test_a_batch_s_own_run_and_the_re_polling_run_report_it_with_the_same_fields(
    pipeline_env: dict[str, str], engine: Any, simulator: SimulatorServer, instance: Any
) -> None:
    # One builder for a batch's events (defs/reports.py): an operator reads the same fields
    # and checks whichever run settled the batch.
    tasks = [
        {"prompt": "fine", "model": "veo-flash"},
        {"prompt": "flagged [sim:input_moderation]", "model": "sora-2"},
    ]
    by_own_run, by_repoll = new_batch(engine, tasks), new_batch(engine, tasks, user="bea")
    own = run_batch(instance, by_own_run)
    with engine.begin() as conn:  # leave the second to the re-polling run alone
        conn.execute(sa.text("UPDATE batch_jobs SET status = 'settled' WHERE id = :b"),
                     {"b": by_own_run})  # fmt: skip
    repolled = repoll(instance)

    mine = materializations(own)
    theirs = partition_events(repolled)
    for asset in ("polled_results", "settled_ledger"):
        # Each run adds what it alone knows: its engine's figures, or which run it was; the
        # batch's own run also shows a preview of the first tasks.
        run_only = ENGINE_FIELDS | {"poll_budget_spent", "ledger_entries_written", "preview"}
        own_fields = {k for k in mine[asset] if k not in run_only and not k.startswith("now_")}
        assert own_fields == set(theirs[(asset, by_repoll)]) - {"repoll_run"}
    assert (
        mine["settled_ledger"]["failures_by_reason"]
        == (theirs[("settled_ledger", by_repoll)]["failures_by_reason"])
    )
    checks_of_own = {e.check_name: e.passed for e in own.get_asset_check_evaluations()}
    checks_of_repoll = {
        e.check_name: e.passed
        for e in repolled.get_asset_check_evaluations()
        if e.partition == by_repoll and e.asset_key.to_user_string() != "archived_videos"
    }
    del checks_of_own["videos_archived_in_time"]
    assert checks_of_own == checks_of_repoll


def _stacks() -> str:
    """Where every thread of this process is: what a run that outlives its budget waits on."""
    names = {t.ident: t.name for t in threading.enumerate()}
    return "\n".join(
        f"--- {names.get(ident, ident)}\n" + "".join(traceback.format_stack(frame))
        for ident, frame in sys._current_frames().items()
    )


def test_a_run_whose_engine_is_done_leaves_the_videos_still_waiting_to_the_next_runs(
    pipeline_env: dict[str, str],
    engine: Any,
    simulator: SimulatorServer,
    instance: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Its archiver stops within a slice of copying once the engine is done (handed over, or
    nothing open), so the run frees its grsai/repoll slot for the next relief; the videos it
    did not reach wait for the runs at work."""
    monkeypatch.setenv("GRSAI_ARCHIVE_BUDGET_S", "0")  # the batch's own run copies nothing
    batch_id = new_batch(
        engine, [{"prompt": f"slow cdn {n}", "model": "sora-2"} for n in range(12)]
    )
    assert run_batch(instance, batch_id).success
    monkeypatch.setenv("GRSAI_ARCHIVE_CONCURRENCY", "1")
    # Every video takes 4 s or more to download: 12 of them, one at a time, take 48 s.
    simulator.simulator.state.config.video_bytes = 3 * 1024 * 1024
    simulator.simulator.state.config.video_chunk_delay_s = 2.0

    started = time.monotonic()
    result = repoll(instance, budget_s=120)  # nothing open: its engine is done at once
    took = time.monotonic() - started

    assert result.success
    archived = rows(
        engine, "SELECT count(archived_url) AS n FROM video_tasks WHERE batch_job_id = :b",
        b=batch_id,
    )[0]["n"]  # fmt: skip
    assert 1 <= archived < 12, archived
    assert took < 30, f"the run stayed {took:.0f} s after its engine was done"
    assert materializations(result)["archived_videos"]["videos_archived"] == archived
