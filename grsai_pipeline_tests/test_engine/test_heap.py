"""The poll heap's memory of lateness: how late the polls the engine paced itself went out,
which shortens its waits on a loaded machine (domain/pacing.py)."""

from __future__ import annotations

import time

from grsai_pipeline.domain.lifecycle import TaskState
from grsai_pipeline.engine.heap import PollHeap, RecentLateness
from grsai_pipeline.store.tasks import RemoteTask


def remote(task_id: str) -> RemoteTask:
    state = TaskState(id=task_id, status="processing", grsai_task_id=f"r-{task_id}")
    return RemoteTask(state, batch_job_id="b-1", model="sora-2")


def test_a_slow_minute_is_remembered_for_a_minute_then_forgotten() -> None:
    late = RecentLateness(window_s=60.0, slices=6)
    late.saw(1.0, now=1000.0)
    late.saw(7.5, now=1005.0)
    late.saw(0.2, now=1030.0)
    assert late.recent_s(1030.0) == 7.5
    assert late.recent_s(1055.0) == 7.5  # still within the window
    assert late.recent_s(1075.0) == 0.2  # the slow slice is over a minute old
    assert late.recent_s(1200.0) == 0.0


def test_only_polls_the_engine_paced_itself_count_as_its_lateness() -> None:
    heap = PollHeap()
    heap.schedule(remote("taken"), -30.0)  # taken from another engine, already overdue
    heap.schedule(remote("paced"), -3.0, paced=True)  # its own wait, due 3 s ago
    now = time.monotonic()
    popped = [heap.pop_due(now), heap.pop_due(now)]
    assert [t.state.id for t in popped if t] == ["taken", "paced"]
    assert 3.0 <= heap.late.recent_s(now) < 3.5
    # A paced entry superseded before it came up (answered sooner, forgotten) counts nothing.
    heap.schedule(remote("again"), -9.0, paced=True)
    heap.schedule(remote("again"), -1.0)
    heap.schedule(remote("gone"), -20.0, paced=True)
    heap.forget("gone")
    while heap.pop_due(now) is not None:
        pass
    assert heap.late.recent_s(now) < 3.5


def test_of_the_due_polls_the_one_nearest_the_max_gap_goes_first() -> None:
    """On a busy engine both are due: the task polled every interval near its end (its max gap
    58 s away) waits for the one paced to the max gap (2 s away), not the other way round."""
    heap = PollHeap(long_wait_slack_s=30.0)
    heap.schedule(remote("near-its-end"), -5.0, paced=True, deadline_in_s=53.0)
    heap.schedule(remote("paced-58-s"), -1.0, paced=True, deadline_in_s=1.0)
    heap.schedule(remote("not-due"), 10.0, paced=True, deadline_in_s=0.5)
    now = time.monotonic()
    popped = [heap.pop_due(now), heap.pop_due(now), heap.pop_due(now)]
    assert [t.state.id for t in popped if t] == ["paced-58-s", "near-its-end"]
    # Only the long wait's lateness is the engine's: the near-end poll waited by design.
    assert 1.0 <= heap.late.recent_s(now) < 1.5
    assert heap.due_after(now) == ["not-due"] and heap.next_due_at() is not None


def test_without_deadlines_due_polls_go_in_the_order_they_fell_due() -> None:
    heap = PollHeap()
    for name, after in (("third", -1.0), ("first", -3.0), ("second", -2.0)):
        heap.schedule(remote(name), after)
    now = time.monotonic()
    assert [t.state.id for t in iter(lambda: heap.pop_due(now), None)] == [
        "first", "second", "third",
    ]  # fmt: skip
