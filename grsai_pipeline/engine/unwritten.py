"""What the engine decided and has not written yet, and when it must be written.

Transitions (submit outcomes and poll answers that changed a task) and the ids of tasks whose
poll was answered (changed or not: ``polled_at`` and the poll hold) wait here for the next
transaction. Submit outcomes hold claims, so they wait at most ``RECORD_WITHIN_S``; other
answers ``FLUSH_EVERY_S``; answers that changed nothing ``MARK_POLLED_EVERY_S``.
"""

from __future__ import annotations

import time
from datetime import datetime, timedelta
from typing import Final

from grsai_pipeline.domain.lifecycle import Transition
from grsai_pipeline.store.columns import utc_now

# Poll answers are written at least this often, or once this many wait.
FLUSH_EVERY_S: Final = 0.25
FLUSH_AT: Final = 500
# When polls were answered (changed or not: ``polled_at``) is written at least this often.
MARK_POLLED_EVERY_S: Final = 1.0
# A submit's outcome is written within this (it holds a claim until then).
RECORD_WITHIN_S: Final = 0.05


class Unwritten:
    def __init__(self) -> None:
        self.transitions: list[Transition] = []
        self._since = 0.0
        self.polled: list[str] = []
        self._polled_since = 0.0
        # Submit outcomes among the transitions (each still holds a claim), and since when.
        self.outcomes = 0
        self._outcomes_since = 0.0

    def __bool__(self) -> bool:
        """Whether any transition waits (answers that changed nothing do not count)."""
        return bool(self.transitions)

    def add(self, transition: Transition) -> None:
        now = time.monotonic()
        if not self.transitions:
            self._since = now
        if transition.ends_claim:
            if not self.outcomes:
                self._outcomes_since = now
            self.outcomes += 1
        self.transitions.append(transition)

    def answered(self, task_id: str) -> None:
        """A poll of the task was answered and it is still at the API."""
        if not self.polled:
            self._polled_since = time.monotonic()
        self.polled.append(task_id)

    def first_answer_at(self) -> datetime | None:
        """When the first of the answers waiting came (wall clock), if any wait: written as
        their ``polled_at``, at most ``MARK_POLLED_EVERY_S`` early, so that an engine taking
        one over polls it a little early rather than past the max gap."""
        if not self.polled:
            return None
        return utc_now() - timedelta(seconds=time.monotonic() - self._polled_since)

    def decided(self) -> set[str]:
        """The tasks with a transition waiting to be written."""
        return {t.task_id for t in self.transitions}

    def outcomes_due_at(self) -> float | None:
        return self._outcomes_since + RECORD_WITHIN_S if self.outcomes else None

    def due(self, now: float, batch: int, quiet: bool) -> bool:
        """Whether to write now: ``batch`` outcomes make a transaction worth it; ``quiet``
        (nothing on the wire) writes whatever waits."""
        if self.outcomes and (
            self.outcomes >= batch or now - self._outcomes_since >= RECORD_WITHIN_S or quiet
        ):
            return True
        if self.transitions and (
            len(self.transitions) >= FLUSH_AT or now - self._since >= FLUSH_EVERY_S or quiet
        ):
            return True
        return bool(self.polled) and (
            len(self.polled) >= FLUSH_AT or now - self._polled_since >= MARK_POLLED_EVERY_S
        )

    def take(self) -> tuple[list[Transition], list[str]]:
        """Everything waiting, for one transaction; the buffer starts afresh."""
        transitions, self.transitions = self.transitions, []
        polled, self.polled = self.polled, []
        self.outcomes = 0
        return transitions, polled

    def put_back(self, transitions: list[Transition], polled: list[str]) -> None:
        """What :meth:`take` gave for a transaction that failed: first in line again."""
        now = time.monotonic()
        if transitions:
            self._since = min(self._since, now) if self.transitions else now
            ends = sum(1 for t in transitions if t.ends_claim)
            if ends:
                self._outcomes_since = min(self._outcomes_since, now) if self.outcomes else now
                self.outcomes += ends
            self.transitions = transitions + self.transitions
        if polled:
            self._polled_since = min(self._polled_since, now) if self.polled else now
            self.polled = polled + self.polled
