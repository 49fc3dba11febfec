"""What an operator sees in the Dagster UI: the user, failures by reason and what a backfill
would retry, links to the videos, a WARN check for failed tasks, tags on every run however it
was launched, one clear failure for a partition that names no batch, and a schedule that says
why it waits."""

from __future__ import annotations

from typing import Any

import dagster as dg
import pytest

from grsai_pipeline.definitions import defs
from grsai_pipeline.defs.assets import batch_lifecycle
from grsai_pipeline_tests.conftest import TEST_API_KEY
from grsai_pipeline_tests.helpers import new_batch, rows
from grsai_pipeline_tests.test_defs.dagster_helpers import (
    QUIET,
    materializations,
    run_batch,
    schedule_tick,
    sensor_tick,
)
from grsai_pipeline_tests.test_defs.test_pipeline import MIXED
from grsai_pipeline_tests.test_defs.test_repolling import repoll

FLAKY = {"prompt": "a glass tips over [sim:error]", "model": "sora-2"}


def check_evaluations(result: dg.ExecuteInProcessResult) -> dict[str, Any]:
    return {e.check_name: e for e in result.get_asset_check_evaluations()}


def test_settled_ledger_shows_the_user_failures_by_reason_and_the_videos(
    pipeline_env, engine, simulator, instance
) -> None:
    batch_id = new_batch(engine, [*MIXED, FLAKY], user="dora")

    result = run_batch(instance, batch_id)

    assert result.success
    settled = materializations(result)["settled_ledger"]
    assert settled["user_id"] == "dora"
    assert (settled["tasks_succeeded"], settled["tasks_failed"]) == (4, 7)
    table = settled["failures_by_reason"]
    for reason, tasks, retried in [
        ("INVALID_INPUT", 2, 0),
        ("input_moderation", 1, 0),
        ("output_moderation", 1, 0),
        ("SUCCEEDED_WITHOUT_VIDEO_URL", 1, 0),
        ("error", 1, 1),
    ]:
        assert any(
            [cell.strip() for cell in line.split("|")[1:4]] == [reason, str(tasks), str(retried)]
            for line in table.splitlines()
        ), (reason, table)
    assert settled["failed_tasks_a_backfill_would_retry"] == 1
    urls = [
        t["video_url"] for t in rows(engine, "SELECT video_url FROM video_tasks") if t["video_url"]
    ]
    assert len(urls) == 4 and all(url in settled["videos"] for url in urls)
    archived = materializations(result)["archived_videos"]
    assert archived["videos"].count("(archived copy)") == 4

    check = check_evaluations(result)["all_tasks_succeeded"]
    assert check.passed is False
    assert check.severity == dg.AssetCheckSeverity.WARN
    assert "7 of 11 task(s) failed" in check.description
    assert "a backfill would retry 1" in check.description
    # It is a warning: the run succeeded and the ledger check passed.
    assert check_evaluations(result)["ledger_balances"].passed is True
    # The partition's page (the materialization's metadata) names the batch's results too.
    shown = {
        cells[0]: cells[1:]
        for line in settled["checks"].splitlines()[2:]
        for cells in [[cell.strip() for cell in line.strip("|").split("|")]]
    }
    assert shown == {
        "ledger_balances": ["passed", check_evaluations(result)["ledger_balances"].description],
        "all_tasks_succeeded": ["warning", check.description],
    }

    backfill = run_batch(instance, batch_id)
    assert materializations(backfill)["pending_tasks"]["retries_started"] == 1


def test_a_batch_whose_tasks_all_succeeded_passes_the_tasks_check(
    pipeline_env, engine, simulator, instance
) -> None:
    batch_id = new_batch(engine, [{"prompt": "a calm lake", "model": "veo-flash"}])

    result = run_batch(instance, batch_id)

    check = check_evaluations(result)["all_tasks_succeeded"]
    assert check.passed is True
    assert "failures_by_reason" not in materializations(result)["settled_ledger"]


def test_checks_say_what_failing_means() -> None:
    descriptions = {spec.name: spec.description or "" for spec in batch_lifecycle.check_specs}
    assert set(descriptions) >= {
        "ledger_balances",
        "succeeded_tasks_have_video_url",
        "all_tasks_succeeded",
        "videos_archived_in_time",
    }
    assert all(len(text) > 60 for text in descriptions.values()), descriptions
    # A run that failed upstream shows "Execution failed", which is not a ledger problem.
    assert "Execution failed" in descriptions["ledger_balances"]
    assert "backfill" in descriptions["all_tasks_succeeded"]


def test_materialize_from_the_ui_runs_in_one_process_and_tags_the_run(
    pipeline_env, engine, simulator, instance
) -> None:
    batch_id = new_batch(engine, [{"prompt": "a kite", "model": "sora-2"}], user="erin")
    instance.add_dynamic_partitions("batches", [batch_id])
    job = defs.resolve_implicit_global_asset_job_def()
    assert job.executor_def.name == dg.in_process_executor.name

    materialized = job.execute_in_process(
        run_config=QUIET, instance=instance, partition_key=batch_id, raise_on_error=False
    )
    backfilled = job.execute_in_process(
        run_config=QUIET,
        instance=instance,
        partition_key=batch_id,
        tags={"dagster/backfill": "abcdefgh"},
        raise_on_error=False,
    )

    assert materialized.success and backfilled.success
    for result, trigger in [(materialized, "ui"), (backfilled, "backfill")]:
        tags = instance.get_run_by_id(result.run_id).tags
        assert (tags["batch_id"], tags["user_id"], tags["grsai/trigger"]) == (
            batch_id,
            "erin",
            trigger,
        )
    # Filtering runs by user finds both, as the UI's run filter does.
    found = instance.get_run_ids(dg.RunsFilter(tags={"user_id": "erin"}))
    assert set(found) == {materialized.run_id, backfilled.run_id}


def test_a_partition_that_names_no_batch_fails_once_clearly_and_is_never_retried(
    monkeypatch, database_url, engine
) -> None:
    monkeypatch.setenv("GRSAI_DATABASE_URL", database_url)
    monkeypatch.setenv("GRSAI_API_KEY", TEST_API_KEY)
    retries = {"run_retries": {"enabled": True, "max_retries": 3}}
    with dg.instance_for_test(overrides=retries) as instance:
        result = run_batch(instance, "my-new-batch")

        assert not result.success
        [failure] = [
            e for e in result.all_events if e.event_type == dg.DagsterEventType.STEP_FAILURE
        ]
        message = failure.step_failure_data.user_failure_data.description
        assert "no batch 'my-new-batch' in the application database" in message
        assert "new_batches_sensor" in message and "create_batch" in message
        tags = instance.get_run_by_id(result.run_id).tags
        assert tags["dagster/will_retry"] == "false"
        # Neither the sensor nor the schedule ever starts a run for it.
        assert not sensor_tick(instance, None).run_requests
        assert schedule_tick(instance) == ([], "no batch has unfinished tasks")
        assert rows(engine, "SELECT COUNT(*) AS n FROM batch_jobs") == [{"n": 0}]


@pytest.fixture
def db_env(monkeypatch: pytest.MonkeyPatch, database_url: str) -> None:
    monkeypatch.setenv("GRSAI_DATABASE_URL", database_url)


def test_the_schedule_says_in_its_tick_that_the_api_key_is_missing(
    db_env, engine, instance
) -> None:
    new_batch(engine, [{"prompt": "a", "model": "sora-2"}])

    requests, skipped = schedule_tick(instance)

    assert requests == []
    assert skipped is not None
    assert "1 open batch(es) wait: GRSAI_API_KEY is not set" in skipped


def test_the_schedule_names_an_invalid_setting_instead_of_failing(
    db_env, engine, instance, monkeypatch
) -> None:
    monkeypatch.setenv("GRSAI_API_KEY", TEST_API_KEY)
    new_batch(engine, [{"prompt": "a", "model": "sora-2"}])
    monkeypatch.setenv("GRSAI_MAX_CONCURRENCY", "0")

    requests, skipped = schedule_tick(instance)

    assert requests == []
    assert skipped is not None
    assert skipped.startswith("cannot re-poll: ") and "GRSAI_MAX_CONCURRENCY" in skipped


def test_sensor_runs_carry_the_batch_and_its_user(db_env, engine, instance, monkeypatch) -> None:
    monkeypatch.setenv("GRSAI_API_KEY", TEST_API_KEY)  # without one, the sensor waits for it
    batch_id = new_batch(engine, [{"prompt": "a", "model": "sora-2"}], user="fay")

    [request] = sensor_tick(instance, None).run_requests

    assert request.tags["batch_id"] == batch_id
    assert request.tags["user_id"] == "fay"
    assert request.tags["grsai/trigger"] == "sensor"


def test_every_check_result_names_its_batch_in_the_check_s_history(
    pipeline_env, engine, simulator, instance
) -> None:
    """Issue 24: a result of a batch's own run and one of the re-polling run each carry their
    batch's partition, as the UI's check history and the partition page read them."""
    own = new_batch(engine, [{"prompt": "a kite", "model": "sora-2"}], user="erin")
    other = new_batch(engine, [{"prompt": "a boat [sim:error]", "model": "sora-2"}], user="finn")
    assert run_batch(instance, own).success
    assert repoll(instance).success  # reports `other`, which had no run of its own

    graph = defs.resolve_asset_graph()
    for key in graph.asset_check_keys:
        history = instance.event_log_storage.get_asset_check_execution_history(key, limit=10)
        assert history, key
        assert {record.partition for record in history} <= {own, other}, key
    tasks_check = dg.AssetCheckKey(dg.AssetKey("settled_ledger"), "all_tasks_succeeded")
    latest = {
        record.partition: record.event.dagster_event.event_specific_data
        for record in instance.event_log_storage.get_asset_check_execution_history(
            tasks_check, limit=10
        )
        if record.event and record.event.dagster_event
    }
    assert latest[own].passed is True
    assert latest[other].passed is False and "1 of 1 task(s) failed" in latest[other].description
