"""Who polls a task at the API (SPEC 4, issue 22): one holder per task, decided in the
database; a task whose holder is late, gone or dead is free for any live engine, and engines
that take tasks at the same moment never both get one."""

from __future__ import annotations

from collections import Counter
from datetime import datetime, timedelta

import sqlalchemy as sa

from grsai_pipeline.domain.lifecycle import Accepted, decide
from grsai_pipeline.store.columns import utc_now
from grsai_pipeline.store.polls import (
    PollHolds,
    held_on_acceptance,
    over_share,
    poll_holds,
    release_polls,
    renew_holds,
    share_of,
    take_polls,
)
from grsai_pipeline.store.runners import Heartbeat
from grsai_pipeline.store.tasks import apply_transitions
from grsai_pipeline_tests.helpers import new_batch
from grsai_pipeline_tests.test_store.store_support import (
    POLICY,
    claim,
    record,
    register_stale_runner,
    run_together,
    set_task,
    sora,
    task_ids,
    task_row,
)

LEASE = 30.0
HOLD = timedelta(seconds=10)


def _at_api(engine: sa.Engine, n: int) -> tuple[str, list[str]]:
    """A batch of ``n`` tasks the API accepted (recorded without an engine: nobody holds them)."""
    batch_id = new_batch(engine, [sora(f"task {i}") for i in range(n)])
    claimed = claim(engine, batch_id, "submitter")
    record(engine, "submitter", [(c.state, Accepted(f"remote-{i}")) for i, c in enumerate(claimed)])
    return batch_id, task_ids(engine, batch_id)


def _holds(engine: sa.Engine, runner: str, batch_id: str, now: datetime | None = None) -> PollHolds:
    with engine.connect() as conn:
        return poll_holds(conn, runner, [batch_id], LEASE, now or utc_now())


def _take(engine: sa.Engine, runner: str, ids: list[str], now: datetime | None = None) -> set[str]:
    now = now or utc_now()
    with engine.begin() as conn:
        return take_polls(conn, runner, ids, until=now + HOLD, lease_s=LEASE, now=now)


def test_a_task_a_live_engine_holds_is_left_to_it_by_every_other(engine: sa.Engine) -> None:
    batch_id, ids = _at_api(engine, 3)
    with Heartbeat(engine, "engine-a", LEASE), Heartbeat(engine, "engine-b", LEASE):
        assert set(_holds(engine, "engine-a", batch_id).free) == set(ids)
        assert _take(engine, "engine-a", ids[:2]) == set(ids[:2])

        held = _holds(engine, "engine-a", batch_id)
        assert (set(held.mine), held.free, held.at_api) == (set(ids[:2]), [ids[2]], 3)
        assert _holds(engine, "engine-b", batch_id).free == [ids[2]]
        assert _take(engine, "engine-b", ids) == {ids[2]}  # the held ones stay engine-a's
    assert task_row(engine, ids[0])["polled_by"] == "engine-a"


def test_a_hold_that_ran_out_frees_the_task_though_its_holder_still_beats(
    engine: sa.Engine,
) -> None:
    # A slow engine (or a run busy elsewhere) that did not poll in time loses the task.
    batch_id, ids = _at_api(engine, 2)
    with Heartbeat(engine, "slow", LEASE), Heartbeat(engine, "quick", LEASE):
        _take(engine, "slow", ids)
        later = utc_now() + HOLD + timedelta(seconds=1)
        assert set(_holds(engine, "quick", batch_id, later).free) == set(ids)
        assert _take(engine, "quick", ids, later) == set(ids)
        # The slow one's answer that comes in after does not take them back.
        with engine.begin() as conn:
            renew_holds(conn, "slow", ids, until=later + HOLD, polled_at=later)
        assert _holds(engine, "slow", batch_id, later) == PollHolds({}, [], 2)
    assert {task_row(engine, i)["polled_by"] for i in ids} == {"quick"}


def test_a_dead_or_departed_holder_frees_its_tasks_at_once(engine: sa.Engine) -> None:
    batch_id, ids = _at_api(engine, 2)
    register_stale_runner(engine, "killed", silent_for_s=LEASE + 5)
    with Heartbeat(engine, "departed", LEASE):
        _take(engine, "departed", [ids[1]])
    now = utc_now()
    with engine.begin() as conn:  # killed -9 with its hold still running
        conn.execute(sa.text("UPDATE video_tasks SET polled_by = 'killed', poll_held_until = :u"
                             " WHERE id = :i"), {"u": now + HOLD, "i": ids[0]})  # fmt: skip

    with Heartbeat(engine, "next", LEASE):
        assert set(_holds(engine, "next", batch_id).free) == set(ids)
        assert _take(engine, "next", ids) == set(ids)


def test_engines_taking_the_same_tasks_at_once_each_get_a_different_few(
    engine: sa.Engine,
) -> None:
    _, ids = _at_api(engine, 40)
    runners = [f"engine-{n}" for n in range(4)]
    with Heartbeat(engine, runners[0], LEASE), Heartbeat(engine, runners[1], LEASE), \
            Heartbeat(engine, runners[2], LEASE), Heartbeat(engine, runners[3], LEASE):  # fmt: skip
        taken = run_together([lambda r=r: _take(engine, r, ids) for r in runners])  # type: ignore[misc]
    assert sum(len(got) for got in taken) == len(ids)
    assert set().union(*taken) == set(ids)
    holders = {task_row(engine, i)["polled_by"] for i in ids}
    assert holders <= set(runners)


def test_the_engine_whose_submit_was_accepted_holds_the_new_remote_task(
    engine: sa.Engine,
) -> None:
    # A retried task's earlier remote task was held by another engine: that hold is void.
    batch_id = new_batch(engine, [sora("retried")])
    (task_id,) = task_ids(engine, batch_id)
    until = utc_now() + HOLD
    set_task(engine, task_id, polled_by="earlier", poll_held_until=until)
    (claimed,) = claim(engine, batch_id, "submitter")
    now = utc_now()
    accepted = decide(claimed.state, Accepted("remote-new"), now=now, policy=POLICY)
    assert accepted is not None
    with engine.begin() as conn:
        write = held_on_acceptance(accepted, "submitter", until)
        assert apply_transitions(conn, [write], runner_id="submitter", now=now) == 1
    row = task_row(engine, task_id)
    assert (row["polled_by"], row["status"], row["claimed_by"]) == (
        "submitter", "processing", None,
    )  # fmt: skip
    with Heartbeat(engine, "submitter", LEASE):
        assert _holds(engine, "submitter", batch_id).mine == [task_id]


def test_tasks_no_longer_at_the_api_are_nobody_s_to_poll(engine: sa.Engine) -> None:
    batch_id, ids = _at_api(engine, 2)
    set_task(engine, ids[0], status="succeeded", video_url="https://cdn.example.com/v.mp4")
    with Heartbeat(engine, "engine-a", LEASE):
        assert _holds(engine, "engine-a", batch_id).free == [ids[1]]
        assert _take(engine, "engine-a", ids) == {ids[1]}


def test_free_tasks_are_shared_evenly_between_the_live_engines() -> None:
    assert share_of(10, 1) == 10
    assert share_of(10, 3) == 4
    assert share_of(0, 2) == 0
    assert share_of(5, 0) == 5


def test_an_engine_far_over_its_share_lets_the_excess_go_to_one_under_it(
    engine: sa.Engine,
) -> None:
    """Issue 26: a run that took a departed run's tasks carries more than its share; it lets the
    excess go (a little over is kept: no churn), and the engine under its share takes them."""
    assert over_share(12, 10) == 0  # within the slack
    assert over_share(1300, 1000) == 300
    batch_id, ids = _at_api(engine, 30)
    with Heartbeat(engine, "busy", LEASE), Heartbeat(engine, "idle", LEASE):
        assert _take(engine, "busy", ids) == set(ids)
        held = _holds(engine, "busy", batch_id)
        with engine.begin() as conn:
            release_polls(conn, "busy", held.mine[-15:], now=utc_now())
        assert len(_holds(engine, "busy", batch_id).mine) == 15
        free = _holds(engine, "idle", batch_id).free
        assert sorted(free) == sorted(held.mine[-15:])
        assert _take(engine, "idle", free) == set(free)
    assert Counter(task_row(engine, i)["polled_by"] for i in ids) == {"busy": 15, "idle": 15}
