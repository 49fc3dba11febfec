"""The ``create_batch`` job, as an operator launches it from the Dagster UI's launchpad: the same
validation and reservation as ``batch create``, a partition at once, and the sensor's run."""

from __future__ import annotations

import json
from typing import Any

import dagster as dg
import pytest
import sqlalchemy as sa

from grsai_pipeline.definitions import defs
from grsai_pipeline.store.accounts import grant_credits
from grsai_pipeline_tests.conftest import TEST_API_KEY
from grsai_pipeline_tests.helpers import (
    assert_ledger_invariants,
    ledger_kinds,
    rows,
    table_snapshot,
)
from grsai_pipeline_tests.test_defs.dagster_helpers import (
    QUIET,
    check_results,
    materializations,
    sensor_tick,
)

TASKS: list[dict[str, Any]] = [
    {"prompt": "A lighthouse at dawn", "model": "sora-2", "duration": 10},
    {"prompt": "一只猫在雨中漫步", "model": "veo-flash", "aspect_ratio": "16:9"},
]
PRICE = 10 + 20
INVALID_TASK = {"prompt": "A square video", "model": "veo-pro", "aspect_ratio": "4:3"}


@pytest.fixture
def app_env(monkeypatch: pytest.MonkeyPatch, database_url: str) -> None:
    monkeypatch.setenv("GRSAI_DATABASE_URL", database_url)
    monkeypatch.setenv("GRSAI_API_KEY", TEST_API_KEY)


def launch(instance: dg.DagsterInstance, **config: Any) -> dg.ExecuteInProcessResult:
    """The job with the launchpad's config (flat: user, tasks, idempotency_key)."""
    return defs.resolve_job_def("create_batch").execute_in_process(
        run_config=config, instance=instance, raise_on_error=False
    )


def failure_message(result: dg.ExecuteInProcessResult) -> str:
    """What the run page says of the failed step."""
    failures = [e for e in result.all_events if e.event_type == dg.DagsterEventType.STEP_FAILURE]
    assert len(failures) == 1
    data = failures[0].step_failure_data
    assert data.user_failure_data is not None
    return str(data.user_failure_data.description)


def output_metadata(result: dg.ExecuteInProcessResult) -> dict[str, Any]:
    [event] = [e for e in result.all_events if e.event_type == dg.DagsterEventType.STEP_OUTPUT]
    return {k: v.value for k, v in event.step_output_data.metadata.items()}


def test_a_batch_from_the_launchpad_is_reserved_partitioned_tagged_and_run_by_the_sensor(
    app_env, engine, instance
) -> None:
    grant_credits(engine, "alice", 100)

    result = launch(instance, user="alice", tasks=json.dumps([*TASKS, INVALID_TASK]))

    assert result.success
    shown = output_metadata(result)
    batch_id = shown["batch_id"]
    assert shown == {
        "batch_id": batch_id,
        "user_id": "alice",
        "tasks": 3,
        "tasks_valid": 2,
        "tasks_invalid": 1,
        "credits_reserved": PRICE,
        "replayed": False,
    }
    tasks = rows(engine, "SELECT * FROM video_tasks ORDER BY batch_index")
    assert [t["status"] for t in tasks] == ["pending", "pending", "failed"]
    assert tasks[2]["error_message"].startswith("INVALID_INPUT: aspect_ratio")
    assert ledger_kinds(engine, batch_id) == {"reserve": 2}
    assert rows(engine, "SELECT balance, held FROM credit_accounts") == [
        {"balance": 100 - PRICE, "held": PRICE}
    ]
    assert_ledger_invariants(engine)
    # The partition shows at once; the run is findable by batch and by user.
    assert instance.get_dynamic_partitions("batches") == [batch_id]
    tags = instance.get_run_by_id(result.run_id).tags
    assert (tags["batch_id"], tags["user_id"], tags["grsai/trigger"]) == (batch_id, "alice", "ui")

    tick = sensor_tick(instance, None)

    [request] = tick.run_requests
    assert request.partition_key == batch_id
    assert request.tags["batch_id"] == batch_id and request.tags["user_id"] == "alice"
    # Once its run exists, no tick asks for another.
    run = instance.create_run_for_job(
        defs.resolve_job_def("batch_pipeline"), tags=request.tags | {"dagster/partition": batch_id}
    )
    assert run.run_id
    assert not sensor_tick(instance, tick.cursor).run_requests


def test_tasks_given_as_a_yaml_list_are_read_like_the_batch_file(app_env, engine, instance) -> None:
    grant_credits(engine, "bob", 100)

    result = launch(instance, user="bob", tasks=TASKS)

    assert result.success
    assert output_metadata(result)["credits_reserved"] == PRICE
    stored = rows(engine, "SELECT prompt, model FROM video_tasks ORDER BY batch_index")
    assert stored == [{"prompt": t["prompt"], "model": t["model"]} for t in TASKS]


@pytest.mark.parametrize(
    ("config", "words"),
    [
        ({"user": "alice", "tasks": "[{"}, ["tasks is not valid JSON", "line 1"]),
        ({"user": "alice", "tasks": '{"prompt": "x"}'}, ["tasks must hold a JSON list"]),
        ({"user": "alice", "tasks": "[]"}, ["tasks holds an empty list"]),
        ({"user": "alice", "tasks": [TASKS[0], "x"]}, ["tasks: item 1 is a string"]),
        ({"user": "alice", "tasks": "[NaN]"}, ["tasks is not valid JSON"]),
        ({"user": "  ", "tasks": TASKS}, ["user must not be empty"]),
        ({"user": "poor", "tasks": TASKS}, ["'poor' has 5 credits", "needs 30"]),
    ],
)
def test_bad_input_fails_the_run_with_one_line_naming_the_field_and_writes_nothing(
    config: dict[str, Any], words: list[str], app_env, engine, instance
) -> None:
    grant_credits(engine, "alice", 100)
    grant_credits(engine, "poor", 5)
    before = table_snapshot(engine)

    result = launch(instance, **config)

    assert not result.success
    message = failure_message(result)
    assert "\n" not in message
    for word in words:
        assert word in message, message
    assert table_snapshot(engine) == before
    assert instance.get_dynamic_partitions("batches") == []


def test_an_idempotency_key_replays_the_first_batch_and_refuses_other_tasks(
    app_env, engine, instance
) -> None:
    grant_credits(engine, "alice", 100)
    first = launch(instance, user="alice", tasks=TASKS, idempotency_key="order-42")
    batch_id = output_metadata(first)["batch_id"]
    after_first = table_snapshot(engine)

    again = launch(instance, user="alice", tasks=json.dumps(TASKS), idempotency_key="order-42")
    other = launch(instance, user="alice", tasks=TASKS[:1], idempotency_key="order-42")

    assert again.success
    assert output_metadata(again)["batch_id"] == batch_id
    assert output_metadata(again)["replayed"] is True
    assert not other.success
    message = failure_message(other)
    assert message.startswith("idempotency_key 'order-42' was used at")
    assert "nothing was written" in message
    assert table_snapshot(engine) == after_first
    assert instance.get_dynamic_partitions("batches") == [batch_id]


def test_a_launchpad_batch_settles_through_the_run_the_sensor_requests(
    pipeline_env, engine, simulator, instance
) -> None:
    grant_credits(engine, "carol", 100)
    created = launch(
        instance,
        user="carol",
        tasks=[*TASKS, {"prompt": "flagged [sim:input_moderation]", "model": "sora-2"}],
    )
    batch_id = output_metadata(created)["batch_id"]
    [request] = sensor_tick(instance, None).run_requests

    run = defs.resolve_job_def("batch_pipeline").execute_in_process(
        run_config=QUIET,
        instance=instance,
        partition_key=request.partition_key,
        tags=request.tags,
        raise_on_error=False,
    )

    assert run.success
    assert rows(engine, "SELECT status FROM batch_jobs WHERE id = :b", b=batch_id) == [
        {"status": "settled"}
    ]
    assert ledger_kinds(engine, batch_id) == {"reserve": 3, "charge": 2, "refund": 1}
    settled = materializations(run)["settled_ledger"]
    assert settled["user_id"] == "carol"
    assert check_results(run)["all_tasks_succeeded"] is False
    assert_ledger_invariants(engine)


def test_the_job_is_listed_with_a_flat_launchpad_config() -> None:
    job = defs.resolve_job_def("create_batch")
    fields = job.run_config_schema.config_type.fields  # type: ignore[attr-defined]
    assert {"user", "tasks", "idempotency_key"} <= set(fields)
    assert fields["user"].is_required and fields["tasks"].is_required
    assert not fields["idempotency_key"].is_required


def test_no_partition_without_a_batch(app_env, engine: sa.Engine, instance) -> None:
    result = launch(instance, user="nobody-granted", tasks=TASKS)

    assert not result.success
    assert "'nobody-granted' has 0 credits" in failure_message(result)
    assert instance.get_dynamic_partitions("batches") == []
