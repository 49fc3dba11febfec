"""One poller per task (SPEC 4, issue 22): engines whose scopes overlap (the re-polling run and
runs of single batches) share the tasks at the API without polling one twice in an interval,
and a task held by an engine that does not poll it (a slow or stuck run) is polled by another
once its hold ends."""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from datetime import timedelta

import pytest
import sqlalchemy as sa

from grsai_pipeline.config import Settings, load_settings
from grsai_pipeline.dev.simulator import SimulatorServer
from grsai_pipeline.engine import loop
from grsai_pipeline.engine.loop import Until
from grsai_pipeline.engine.work import Worker, batch_worker, open_batches_worker
from grsai_pipeline.store.columns import utc_now
from grsai_pipeline.store.runners import Heartbeat
from grsai_pipeline.store.schema import video_tasks
from grsai_pipeline_tests.helpers import new_batch, rows
from grsai_pipeline_tests.test_engine.long_api import long_running_api

INTERVAL_S = 1.0


@pytest.fixture
def long_api(monkeypatch: pytest.MonkeyPatch, database_url: str) -> Iterator[SimulatorServer]:
    """Generations that outlast the test, every poll logged."""
    env = {"GRSAI_POLL_INTERVAL_S": str(INTERVAL_S), "GRSAI_CLAIM_LEASE_S": "4"}
    with long_running_api(monkeypatch, database_url, seed=11, env=env) as sim:
        yield sim


def _submitted(engine: sa.Engine, n: int, label: str) -> str:
    """A batch of ``n`` tasks at the API, submitted by a runner that has left since."""
    batch_id = new_batch(
        engine, [{"prompt": f"{label} {i}", "model": "veo-flash"} for i in range(n)]
    )
    with batch_worker(engine, load_settings(), f"submitter-{label}", batch_id) as worker:
        worker.run(Until.SUBMITTED, 30)
    found = rows(engine, "SELECT status FROM video_tasks WHERE batch_job_id = :b", b=batch_id)
    assert {r["status"] for r in found} == {"processing"}
    return batch_id


def _poll_times(
    sim: SimulatorServer, engine: sa.Engine, batches: list[str]
) -> dict[str, list[float]]:
    """Per task of these batches, when the API was polled about it."""
    found = rows(engine, "SELECT id, grsai_task_id, batch_job_id FROM video_tasks")
    remote = {r["grsai_task_id"]: r["id"] for r in found if r["batch_job_id"] in batches}
    polls = sim.simulator.state.polls
    return {task: sorted(polls.get(remote_id, [])) for remote_id, task in remote.items()}


def _run_together(
    workers: list[Callable[[], AbstractContextManager[Worker]]], seconds: float
) -> None:
    def follow(make: Callable[[], AbstractContextManager[Worker]]) -> None:
        with make() as worker:
            worker.run(Until.FINAL, seconds)

    threads = [threading.Thread(target=follow, args=(make,), daemon=True) for make in workers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=seconds + 30)
    assert not any(thread.is_alive() for thread in threads)


def _older_then_newer(
    engine: sa.Engine,
    settings: Settings,
    names: tuple[str, str],
    older_s: float,
    newer_after_s: float,
    newer_s: float,
) -> None:
    """Two runners of every open batch: the older one works ``older_s``; the newer one starts
    ``newer_after_s`` later and works ``newer_s``."""
    older = threading.Thread(
        target=_run_together,
        args=([lambda: open_batches_worker(engine, settings, names[0])], older_s),
        daemon=True,
    )
    older.start()
    threading.Event().wait(newer_after_s)
    _run_together([lambda: open_batches_worker(engine, settings, names[1])], newer_s)
    older.join(timeout=40)


def test_overlapping_engines_poll_each_task_once_an_interval(
    engine: sa.Engine, long_api: SimulatorServer
) -> None:
    settings: Settings = load_settings()
    first, second = _submitted(engine, 12, "first"), _submitted(engine, 12, "second")
    long_api.simulator.state.polls.clear()

    # The re-polling run, each batch's own run and `grsai-pipeline run` of the first, all at
    # once, for four intervals.
    _run_together(
        [
            lambda: open_batches_worker(engine, settings, "repoll-run"),
            lambda: batch_worker(engine, settings, "run-of-first", first),
            lambda: batch_worker(engine, settings, "cli-run-of-first", first),
            lambda: batch_worker(engine, settings, "run-of-second", second),
        ],
        4 * INTERVAL_S,
    )

    times = _poll_times(long_api, engine, [first, second])
    assert len(times) == 24 and all(len(t) >= 3 for t in times.values()), times
    closest = min(b - a for t in times.values() for a, b in itertools.pairwise(t))
    assert closest > 0.8 * INTERVAL_S


def test_tasks_held_by_a_run_that_does_not_poll_them_are_polled_once_its_hold_ends(
    engine: sa.Engine, long_api: SimulatorServer
) -> None:
    # A run of the batch that is alive (it beats) but stuck: it holds every task for 2 s more.
    batch_id = _submitted(engine, 6, "stuck")
    long_api.simulator.state.polls.clear()
    settings = load_settings()
    with Heartbeat(engine, "stuck-run", settings.claim_lease_s, batch_id):
        held_until = utc_now() + timedelta(seconds=2)
        with engine.begin() as conn:
            conn.execute(
                video_tasks.update().values(polled_by="stuck-run", poll_held_until=held_until)
            )
        with open_batches_worker(engine, settings, "repoll-run") as worker:
            report = worker.run(Until.FINAL, 6.0)

    times = _poll_times(long_api, engine, [batch_id])
    assert report.polls >= 6 and all(times.values()), times
    first = min(t[0] for t in times.values())
    assert first >= held_until.timestamp() - 0.05  # never while the stuck run held them
    # Taken at the engine's next read after the hold ended (reads come every 2 s).
    assert max(t[0] for t in times.values()) <= held_until.timestamp() + 3.5
    holders = rows(
        engine, "SELECT DISTINCT polled_by FROM video_tasks WHERE batch_job_id = :b", b=batch_id
    )
    assert holders == [{"polled_by": "repoll-run"}]


def test_a_re_polling_run_holding_every_task_shares_them_with_one_that_starts_later(
    engine: sa.Engine, long_api: SimulatorServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 26: the run that was alone holds every task; once a second is up, it lets the
    tasks over its share go and the second polls them (before, it kept them all, and one run's
    wire carried what two should), with no task polled twice within an interval."""
    monkeypatch.setenv("GRSAI_REPOLL_RUNS", "2")
    settings = load_settings()
    batch_id = _submitted(engine, 60, "many")
    long_api.simulator.state.polls.clear()

    _older_then_newer(engine, settings, ("first-run", "second-run"), 10.0, 3.0, 7.0)

    holders = rows(
        engine,
        "SELECT polled_by, COUNT(*) AS n FROM video_tasks WHERE batch_job_id = :b"
        " GROUP BY polled_by",
        b=batch_id,
    )
    held = {r["polled_by"]: r["n"] for r in holders}
    assert held.get("second-run", 0) >= 20 and held.get("first-run", 0) <= 40, held
    times = _poll_times(long_api, engine, [batch_id])
    closest = min(b - a for t in times.values() for a, b in itertools.pairwise(t))
    assert closest > 0.8 * INTERVAL_S


def test_a_task_found_held_by_an_engine_that_had_forgotten_it_is_polled_once(
    engine: sa.Engine, long_api: SimulatorServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 26: an engine that had forgotten a task it still holds (its renewal skipped a
    locked row) finds it at its next read, held for one more second. It counts that second,
    not a whole hold from the read: once the hold ends another engine takes the task, and
    only that one polls it when it is due (before, both did, 0.41 s apart, in the benchmark)."""
    monkeypatch.setenv("GRSAI_POLL_INTERVAL_S", "10")
    monkeypatch.setenv("GRSAI_POLL_MAX_GAP_S", "10")  # fixed polling: due each interval
    monkeypatch.setenv("GRSAI_CLAIM_LEASE_S", "20")  # a hold of 10 + 10 s
    monkeypatch.setenv("GRSAI_REPOLL_RUNS", "2")  # two engines at work, no handover
    monkeypatch.setattr(loop, "RESCAN_EVERY_S", 10.0)  # one read each within the test
    settings = load_settings()
    batch_id = _submitted(engine, 1, "forgotten")
    now = utc_now()
    with engine.begin() as conn:  # held by "older-run" for 1.5 s more; due in 4 s
        conn.execute(
            video_tasks.update().values(
                polled_by="older-run",
                poll_held_until=now + timedelta(seconds=1.5),
                polled_at=now - timedelta(seconds=6),
                submitted_at=now - timedelta(seconds=60),
            )
        )
    long_api.simulator.state.polls.clear()

    # The newer one up after the hold ended, before the poll is due.
    _older_then_newer(engine, settings, ("older-run", "newer-run"), 7.0, 2.5, 4.0)

    times = _poll_times(long_api, engine, [batch_id])
    assert [len(t) for t in times.values()] == [1], times  # once, not by both engines
    holders = rows(engine, "SELECT polled_by FROM video_tasks WHERE batch_job_id = :b", b=batch_id)
    assert holders == [{"polled_by": "newer-run"}]
