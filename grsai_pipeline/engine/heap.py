"""The engine's poll heap: the tasks at the API it polls, ordered by when each poll is due.

A task is scheduled again after each answer; an entry superseded by a later schedule, or of a
task forgotten since (finished elsewhere, taken by another engine), is skipped when it comes
up. A task being polled stays known (``ids``) but is not scheduled until its answer comes.

Of the polls that are due, the one with the earliest deadline goes first: a task's deadline is
when its gap would pass the longest wait (GRSAI_POLL_MAX_GAP_S after its last answer). With
slots to spare that is the order they fell due; on a loaded machine a task paced near the max
gap goes before one polled every interval near its end, which only learns of its end a little
later (in 1,000 x 20, 1,886 gaps over 60 s began while the first minute's tasks, near their
end, were polled every interval: BENCHMARKS.md, G).

The heap also keeps how late the long waits it paced itself went out (``late``): on a loaded
machine the engine aims its waits that much sooner (domain/pacing.py).
"""

from __future__ import annotations

import heapq
import itertools
import math
import time
from collections import deque
from collections.abc import Iterator

from grsai_pipeline.store.tasks import RemoteTask


class RecentLateness:
    """The latest a paced poll went out after it was due, over about the last ``window_s``:
    kept per slice of the window, so a slow minute is forgotten a minute later."""

    def __init__(self, window_s: float = 60.0, slices: int = 6) -> None:
        self._width = window_s / slices
        self._slices: deque[tuple[int, float]] = deque(maxlen=slices)  # (slice, latest in it)

    def saw(self, late_s: float, now: float) -> None:
        index = int(now // self._width)
        if self._slices and self._slices[-1][0] == index:
            if late_s > self._slices[-1][1]:
                self._slices[-1] = (index, late_s)
        else:
            self._slices.append((index, late_s))

    def recent_s(self, now: float) -> float:
        oldest = int(now // self._width) - (self._slices.maxlen or 1) + 1
        return max((late for index, late in self._slices if index >= oldest), default=0.0)


class PollHeap:
    def __init__(self, long_wait_slack_s: float = math.inf) -> None:
        self._tasks: dict[str, RemoteTask] = {}
        # (due, deadline, seq, task): not due yet; (deadline, due, seq, task): due, in turn.
        self._due: list[tuple[float, float, int, str]] = []
        self._ready: list[tuple[float, float, int, str]] = []
        self._seq_of: dict[str, int] = {}
        self._seq = itertools.count()
        # Entries this engine paced after an answer: only their lateness is the engine's own
        # (a task taken from another engine may have been overdue before it was read).
        self._paced: set[int] = set()
        # Only entries due at most this long before their deadline count as late: those near
        # their end wait behind the others when the engine is busy, by design.
        self._long_wait_slack_s = long_wait_slack_s
        self.late = RecentLateness()

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

    def schedule(
        self,
        task: RemoteTask,
        after_s: float,
        *,
        paced: bool = False,
        deadline_in_s: float | None = None,
    ) -> None:
        """Poll ``task`` in ``after_s``; its gap passes the max gap in ``deadline_in_s`` (None:
        when it falls due)."""
        seq = next(self._seq)
        self._tasks[task.state.id] = task
        self._paced.discard(self._seq_of.get(task.state.id, -1))
        self._seq_of[task.state.id] = seq
        if paced:
            self._paced.add(seq)
        now = time.monotonic()
        due = now + after_s
        deadline = due if deadline_in_s is None else now + deadline_in_s
        heapq.heappush(self._due, (due, deadline, seq, task.state.id))

    def forget(self, task_id: str) -> None:
        self._tasks.pop(task_id, None)
        self._paced.discard(self._seq_of.pop(task_id, -1))

    def due_after(self, moment: float) -> list[str]:
        """The tasks waiting for a poll due later than ``moment`` (monotonic)."""
        return [task_id for task_id, _, due in self.waiting_due() if due > moment]

    def waiting_due(self) -> Iterator[tuple[str, RemoteTask, float]]:
        """Each task waiting for its next poll, as this engine last knew it, and when that poll
        is due (monotonic)."""
        entries = [(due, seq, task_id) for due, _, seq, task_id in self._due]
        entries += [(due, seq, task_id) for _, due, seq, task_id in self._ready]
        for due, seq, task_id in entries:
            if self._seq_of.get(task_id) == seq:
                yield task_id, self._tasks[task_id], due

    def next_due_at(self) -> float | None:
        """When the earliest entry is due (it may be stale: waking early is harmless)."""
        if self._ready:
            return self._ready[0][1]
        return self._due[0][0] if self._due else None

    def pop_due(self, now: float) -> RemoteTask | None:
        """Of the tasks whose poll is due, the one with the earliest deadline, taken off the
        heap; None when none is due."""
        while self._due and self._due[0][0] <= now:
            due, deadline, seq, task_id = heapq.heappop(self._due)
            if self._seq_of.get(task_id) == seq:  # else superseded, being polled, or gone
                heapq.heappush(self._ready, (deadline, due, seq, task_id))
        while self._ready:
            deadline, due, seq, task_id = heapq.heappop(self._ready)
            if self._seq_of.get(task_id) != seq:
                continue
            del self._seq_of[task_id]
            if seq in self._paced:
                self._paced.discard(seq)
                if deadline - due <= self._long_wait_slack_s:
                    self.late.saw(now - due, now)
            return self._tasks[task_id]
        return None
