"""Ticks of the sensor and the schedule on a real Dagster instance, reading a real database."""

from __future__ import annotations

import json
from datetime import datetime, timedelta

import pytest
import sqlalchemy as sa

from grsai_pipeline.store.runners import Heartbeat
from grsai_pipeline_tests.conftest import TEST_API_KEY
from grsai_pipeline_tests.cutting_proxy import CuttingProxy
from grsai_pipeline_tests.helpers import new_batch
from grsai_pipeline_tests.test_defs.dagster_helpers import (
    schedule_tick,
    sensor_tick,
    standby_tick,
    start_run,
)

TASK = {"prompt": "a", "model": "sora-2"}


def cursor_mark(cursor: str | None) -> str:
    """The sensor cursor's high-water mark of ``created_at``."""
    assert cursor is not None
    return str(json.loads(cursor)["high_water"])


@pytest.fixture
def app_env(monkeypatch: pytest.MonkeyPatch, database_url: str) -> None:
    monkeypatch.setenv("GRSAI_DATABASE_URL", database_url)
    monkeypatch.setenv("GRSAI_API_KEY", TEST_API_KEY)


def test_new_batches_get_a_partition_and_exactly_one_run_each(app_env, engine, instance) -> None:
    first, second = new_batch(engine, [TASK]), new_batch(engine, [TASK, TASK])

    tick = sensor_tick(instance, None)

    assert sorted(r.partition_key for r in tick.run_requests) == sorted([first, second])
    assert len({r.run_key for r in tick.run_requests}) == 2
    assert set(instance.get_dynamic_partitions("batches")) == {first, second}
    assert all(r.tags["batch_id"] == r.partition_key for r in tick.run_requests)

    repeat = sensor_tick(instance, tick.cursor)
    assert not repeat.run_requests
    assert set(instance.get_dynamic_partitions("batches")) == {first, second}

    third = new_batch(engine, [TASK])
    later = sensor_tick(instance, repeat.cursor)
    assert [r.partition_key for r in later.run_requests] == [third]


def test_a_batch_created_with_an_older_timestamp_is_not_missed(app_env, engine, instance) -> None:
    first = new_batch(engine, [TASK])
    tick = sensor_tick(instance, None)
    late = new_batch(engine, [TASK])
    # Another writer's clock lags a minute: its batch looks older than the cursor.
    with engine.begin() as conn:
        conn.execute(
            sa.text("UPDATE batch_jobs SET created_at = :t WHERE id = :b"),
            {
                "t": datetime.fromisoformat(cursor_mark(tick.cursor)) - timedelta(minutes=1),
                "b": late,
            },
        )
    again = sensor_tick(instance, tick.cursor)
    assert [r.partition_key for r in again.run_requests] == [late]
    assert first in instance.get_dynamic_partitions("batches")


def test_more_new_batches_than_one_tick_takes_are_taken_by_the_next_ticks(
    app_env, engine, instance, monkeypatch
) -> None:
    from grsai_pipeline.defs import sensors

    monkeypatch.setattr(sensors, "MAX_NEW_PER_TICK", 3)
    monkeypatch.setattr(sensors, "PAGE", 2)
    created = [new_batch(engine, [TASK]) for _ in range(7)]

    cursor, taken = None, []
    for _ in range(4):
        tick = sensor_tick(instance, cursor)
        cursor = tick.cursor
        taken.append([r.partition_key for r in tick.run_requests or []])

    assert [len(t) for t in taken] == [3, 3, 1, 0]
    assert sorted(key for tick_keys in taken for key in tick_keys) == sorted(created)
    # Later batches are still found behind a window full of known ones.
    later = new_batch(engine, [TASK])
    assert [r.partition_key for r in sensor_tick(instance, cursor).run_requests] == [later]


def test_a_batch_another_engine_settled_still_gets_its_one_run(app_env, engine, instance) -> None:
    batch_id = new_batch(engine, [TASK])
    with engine.begin() as conn:
        conn.execute(
            sa.text("UPDATE batch_jobs SET status = 'settled' WHERE id = :b"), {"b": batch_id}
        )
    tick = sensor_tick(instance, None)
    (request,) = tick.run_requests
    assert request.partition_key == batch_id
    assert (request.tags["batch_id"], request.tags["user_id"]) == (batch_id, "alice")
    assert request.tags["grsai/trigger"] == "sensor"
    assert batch_id in instance.get_dynamic_partitions("batches")


def test_a_batch_a_re_polling_run_reported_before_the_tick_still_gets_its_one_run(
    app_env, engine, instance
) -> None:
    # The re-polling run sent, settled and reported it (adding its partition) within seconds.
    before = new_batch(engine, [TASK])
    tick = sensor_tick(instance, None)
    reported = new_batch(engine, [TASK])
    instance.add_dynamic_partitions("batches", [reported])

    later = sensor_tick(instance, tick.cursor)

    assert [r.partition_key for r in later.run_requests] == [reported]
    assert later.run_requests[0].tags["grsai/trigger"] == "sensor"
    assert not sensor_tick(instance, later.cursor).run_requests
    assert set(instance.get_dynamic_partitions("batches")) == {before, reported}


def test_the_sensor_skips_with_the_reason_when_no_api_key_is_set(
    app_env, engine, instance, monkeypatch
) -> None:
    monkeypatch.delenv("GRSAI_API_KEY")
    batch_id = new_batch(engine, [TASK])

    tick = sensor_tick(instance, None)

    assert not tick.run_requests and tick.skip_message is not None
    assert "GRSAI_API_KEY is not set" in tick.skip_message
    assert batch_id not in instance.get_dynamic_partitions("batches")
    monkeypatch.setenv("GRSAI_API_KEY", TEST_API_KEY)
    assert [r.partition_key for r in sensor_tick(instance, tick.cursor).run_requests] == [batch_id]


def test_a_partition_that_names_no_batch_is_removed_by_the_next_tick(
    app_env, engine, instance
) -> None:
    """Issue 24: "Add partition" in the UI with a key that is no batch id: gone at the next
    tick (with a log line), and the batches' own partitions stay."""
    real = new_batch(engine, [TASK])
    tick = sensor_tick(instance, None)
    instance.add_dynamic_partitions("batches", ["6101d629", "not-a-batch"])

    cleaned = sensor_tick(instance, tick.cursor)

    assert set(instance.get_dynamic_partitions("batches")) == {real}
    assert not cleaned.run_requests
    later = new_batch(engine, [TASK])
    instance.add_dynamic_partitions("batches", ["junk-again"])
    after = sensor_tick(instance, cleaned.cursor)
    assert [r.partition_key for r in after.run_requests] == [later]
    assert set(instance.get_dynamic_partitions("batches")) == {real, later}
    # An operator removed the last checked partition meanwhile: the next tick checks all.
    instance.delete_dynamic_partition("batches", real)
    instance.add_dynamic_partitions("batches", ["junk-3"])
    sensor_tick(instance, after.cursor)
    assert set(instance.get_dynamic_partitions("batches")) == {later}


def make_processing(engine: sa.Engine, batch_id: str) -> None:
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "UPDATE video_tasks SET status = 'processing', grsai_task_id = 'r'"
                " WHERE batch_job_id = :b"
            ),
            {"b": batch_id},
        )


def test_schedule_asks_for_one_run_that_covers_every_open_batch(app_env, engine, instance) -> None:
    processing, _never_submitted, settled = (new_batch(engine, [TASK, TASK]) for _ in range(3))
    make_processing(engine, processing)
    with engine.begin() as conn:
        conn.execute(
            sa.text("UPDATE batch_jobs SET status = 'settled' WHERE id = :b"), {"b": settled}
        )

    requests, skipped = schedule_tick(instance)

    assert skipped is None
    assert len(requests) == 1
    assert requests[0].partition_key is None
    assert requests[0].run_key == "repoll:2026-11-22T12:00:00+00:00"
    assert requests[0].tags["grsai/repoll"] == "all"


def test_schedule_asks_for_the_re_polling_run_even_beside_a_batch_s_own_run(
    app_env, engine, instance
) -> None:
    # A run of its own (queued, slow or stuck) holds no batch back: the re-polling run shares
    # its tasks with it, task by task (store/polls.py).
    busy = new_batch(engine, [TASK])
    make_processing(engine, busy)
    instance.add_dynamic_partitions("batches", [busy])
    start_run(instance, "batch_pipeline", {"dagster/partition": busy, "batch_id": busy})

    requests, skipped = schedule_tick(instance)

    assert skipped is None and len(requests) == 1
    assert requests[0].tags["grsai/repoll"] == "all"


def test_schedule_starts_no_second_re_polling_run_while_one_is_live(
    app_env, engine, instance
) -> None:
    make_processing(engine, new_batch(engine, [TASK]))
    start_run(instance, "repoll_open_batches", {"grsai/repoll": "all"})

    requests, skipped = schedule_tick(instance)

    assert requests == []
    assert skipped is not None and "still at work" in skipped


def test_a_started_re_polling_run_whose_engine_stopped_beating_holds_nothing_back(
    app_env, engine, instance, monkeypatch
) -> None:
    # A run Dagster still sees as started, whose process died (kill -9): once past its start-up
    # grace, it counts as live only while its engine (runner id = run id) beats.
    batch_id = new_batch(engine, [TASK])
    make_processing(engine, batch_id)
    run_id = start_run(instance, "repoll_open_batches", {"grsai/repoll": "all"})
    monkeypatch.setattr("grsai_pipeline.defs.runs.START_GRACE_S", 0.0)

    with Heartbeat(engine, run_id, 300):
        assert schedule_tick(instance)[0] == []
    # The engine stopped beating (its row is gone, as after the lease when killed).
    requests, skipped = schedule_tick(instance)
    assert skipped is None and len(requests) == 1


def test_schedule_starts_the_next_re_polling_run_once_the_live_one_is_due_for_relief(
    app_env, engine, instance, monkeypatch
) -> None:
    make_processing(engine, new_batch(engine, [TASK]))
    start_run(instance, "repoll_open_batches", {"grsai/repoll": "all"})
    monkeypatch.setattr("grsai_pipeline.defs.schedules.HANDOVER_AFTER_S", 0.0)

    requests, _ = schedule_tick(instance)
    assert len(requests) == 1 and requests[0].tags["grsai/repoll"] == "all"

    # While two are live (the handover under way), it asks for no third.
    start_run(instance, "repoll_open_batches", {"grsai/repoll": "all"})
    requests, skipped = schedule_tick(instance)
    assert requests == [] and skipped is not None and "still at work" in skipped


def test_schedule_keeps_grsai_repoll_runs_at_work(app_env, engine, instance, monkeypatch) -> None:
    """GRSAI_REPOLL_RUNS=3: the missing runs at once, none while three are live, the oldest's
    successor once it is due for relief, and a dead one replaced. Each works 12 minutes, not
    6: the two relieved after the first are still at work when their turn comes."""
    monkeypatch.setenv("GRSAI_REPOLL_RUNS", "3")
    make_processing(engine, new_batch(engine, [TASK]))

    requests, skipped = schedule_tick(instance)
    assert skipped is None and len(requests) == 3
    assert len({r.run_key for r in requests}) == 3
    assert {r.tags["grsai/repoll"] for r in requests} == {"all"}
    budgets = {
        r.run_config["ops"]["repoll_open_batches_op"]["config"]["budget_s"] for r in requests
    }
    assert budgets == {720.0}

    run_ids = [start_run(instance, "repoll_open_batches", {"grsai/repoll": "all"})]
    assert len(schedule_tick(instance)[0]) == 2  # one live: two more
    run_ids += [start_run(instance, "repoll_open_batches", {"grsai/repoll": "all"})]
    run_ids += [start_run(instance, "repoll_open_batches", {"grsai/repoll": "all"})]
    requests, skipped = schedule_tick(instance)
    assert requests == [] and skipped is not None and "still at work" in skipped

    monkeypatch.setattr("grsai_pipeline.defs.schedules.HANDOVER_AFTER_S", 0.0)
    assert len(schedule_tick(instance)[0]) == 1  # the oldest's successor
    run_ids += [start_run(instance, "repoll_open_batches", {"grsai/repoll": "all"})]
    assert schedule_tick(instance)[0] == []  # four live: the handover is under way

    # Two of the four die without Dagster knowing (past their start-up grace, no heartbeat):
    # one more makes three at work.
    monkeypatch.setattr("grsai_pipeline.defs.runs.START_GRACE_S", 0.0)
    with Heartbeat(engine, run_ids[2], 300), Heartbeat(engine, run_ids[3], 300):
        monkeypatch.setattr("grsai_pipeline.defs.schedules.HANDOVER_AFTER_S", 3600.0)
        assert len(schedule_tick(instance)[0]) == 1


def test_ticks_skip_with_the_reason_while_the_application_database_fails_over(
    app_env, engine, instance, database_url, monkeypatch
) -> None:
    """Issue 26: behind a proxy that cuts every connection, the sensor and the schedule skip
    their tick saying why (the sensor's cursor stays), and the next tick takes what waits."""
    if not database_url.startswith("postgresql"):
        pytest.skip("a failover cuts a server's connections; SQLite is a file")
    batch_id = new_batch(engine, [TASK])
    make_processing(engine, new_batch(engine, [TASK]))
    url = sa.engine.make_url(database_url)
    with CuttingProxy(url.host or "", url.port or 5432) as proxy:
        proxied = url.set(host="127.0.0.1", port=proxy.port)
        monkeypatch.setenv("GRSAI_DATABASE_URL", proxied.render_as_string(hide_password=False))
        proxy.cut(30.0)
        skipped = sensor_tick(instance, None)
        assert skipped.skip_message is not None and skipped.cursor is None
        assert "the application database is unreachable" in skipped.skip_message
        requests, reason = schedule_tick(instance)
        assert requests == [] and reason is not None
        assert reason.startswith("cannot re-poll: the application database is unreachable")
    monkeypatch.setenv("GRSAI_DATABASE_URL", database_url)
    assert batch_id in [r.partition_key for r in sensor_tick(instance, None).run_requests]
    assert len(schedule_tick(instance)[0]) == 1


def test_schedule_with_nothing_to_do_requests_nothing(app_env, engine, instance) -> None:
    assert schedule_tick(instance) == ([], "no batch has unfinished tasks")


def test_a_re_polling_run_stands_by_while_none_is_at_work(
    app_env, engine, instance, monkeypatch
) -> None:
    """Issue 22: with nothing at work, the stand-by sensor asks for one re-polling run (an hour
    long, its own trigger tag, not queued behind the sensor's batch runs); none while one is
    queued or at work, nor while a run of the schedule works; its successor before its hour
    ends."""
    (request,) = standby_tick(instance).run_requests
    assert request.job_name == "repoll_open_batches"
    assert (
        request.tags.items()
        >= {
            "grsai/repoll": "all",
            "grsai/standby": "true",
            "grsai/trigger": "standby",
        }.items()
    )
    config = request.run_config["ops"]["repoll_open_batches_op"]["config"]
    assert config == {"budget_s": 3600.0, "linger_s": 3600.0}

    start_run(instance, "repoll_open_batches", request.tags)
    skipped = standby_tick(instance)
    assert not skipped.run_requests and "stands by" in (skipped.skip_message or "")
    # Near the end of its hour (a start's time before), its successor.
    monkeypatch.setattr("grsai_pipeline.defs.standby.STANDBY_BUDGET_S", 30.0)
    assert len(standby_tick(instance).run_requests) == 1


def test_no_stand_by_run_beside_a_run_of_the_schedule_or_without_a_key(
    app_env, engine, instance, monkeypatch
) -> None:
    start_run(instance, "repoll_open_batches", {"grsai/repoll": "all", "grsai/trigger": "schedule"})
    assert not standby_tick(instance).run_requests

    monkeypatch.delenv("GRSAI_API_KEY")
    skipped = standby_tick(instance)
    assert not skipped.run_requests
    assert skipped.skip_message == "no stand-by run: GRSAI_API_KEY is not set"
