"""The engine's poll heap: the tasks at the API it polls, ordered by when each poll is due.

A task is scheduled again after each answer; an entry superseded by a later schedule, or of a
task forgotten since (finished elsewhere, taken by another engine), is skipped when it comes
up. A task being polled stays known (``ids``) but is not scheduled until its answer comes.
"""

from __future__ import annotations

import heapq
import itertools
import time

from grsai_pipeline.store.tasks import RemoteTask


class PollHeap:
    def __init__(self) -> None:
        self._tasks: dict[str, RemoteTask] = {}
        self._due: list[tuple[float, int, str]] = []
        self._seq_of: dict[str, int] = {}
        self._seq = itertools.count()

    def __contains__(self, task_id: object) -> bool:
        return task_id in self._tasks

    def __len__(self) -> int:
        """How many tasks this engine polls, being polled now or not."""
        return len(self._tasks)

    def scheduled(self) -> int:
        """How many tasks wait for their next poll (those being polled are not counted)."""
        return len(self._seq_of)

    def waiting(self, task_id: str) -> bool:
        """Whether ``task_id`` waits for its next poll (known, and not being polled now)."""
        return task_id in self._seq_of

    def ids(self) -> set[str]:
        """Every task this engine polls, being polled now or not."""
        return set(self._tasks)

    def schedule(self, task: RemoteTask, after_s: float) -> None:
        seq = next(self._seq)
        self._tasks[task.state.id] = task
        self._seq_of[task.state.id] = seq
        heapq.heappush(self._due, (time.monotonic() + after_s, seq, task.state.id))

    def forget(self, task_id: str) -> None:
        self._tasks.pop(task_id, None)
        self._seq_of.pop(task_id, None)

    def due_after(self, moment: float) -> list[str]:
        """The tasks waiting for a poll due later than ``moment`` (monotonic)."""
        return [
            task_id
            for due, seq, task_id in self._due
            if due > moment and self._seq_of.get(task_id) == seq
        ]

    def next_due_at(self) -> float | None:
        """When the earliest entry is due (it may be stale: waking early is harmless)."""
        return self._due[0][0] if self._due else None

    def pop_due(self, now: float) -> RemoteTask | None:
        """The task whose poll is due first, taken off the heap; None when none is due."""
        while self._due:
            due, seq, task_id = self._due[0]
            if self._seq_of.get(task_id) != seq:
                heapq.heappop(self._due)  # superseded, being polled, or gone
                continue
            if due > now:
                return None
            heapq.heappop(self._due)
            del self._seq_of[task_id]
            return self._tasks[task_id]
        return None
