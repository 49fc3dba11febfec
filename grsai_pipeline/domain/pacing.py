"""When to poll a task next (SPEC 7 "Polling", issue 25): fewer polls for the same freshness.

A poll that answers "running" tells little; the one that matters is the first after the video
is done. So the wait before the next poll is decided from what is known of the task:

- **History**: recent finished tasks of its model (``ModelDurations``, from the application
  database). Few tasks end before the early quantile of those durations, so until then the
  engine waits most of the time left to it. Past it, a task that shows no progress figure at
  all is paced by the history alone: the engine waits while few of the model's tasks that ran
  as long went on to end within the wait (``NO_PROGRESS_SHARE`` of them).
- **Progress**: while the task's ``progress`` does not go back, its end is estimated from the
  pace at which it reached its figure (``t_p * 100 / p``, ``t_p`` when the figure was first
  seen, ``p`` taken ``PROGRESS_SLACK`` points higher for a figure that lags), and the engine
  waits a share of the time left, so the waits shrink as the end nears;
  past that end (a coarse step overdue, progress stuck near 100) it polls every interval.

The shorter wait wins, never less than ``interval_s`` (GRSAI_POLL_INTERVAL_S) nor more than
``max_gap_s`` (GRSAI_POLL_MAX_GAP_S) less an interval, left for the round trips, and less how
late the engine's recent polls went out (a loaded machine). With neither
usable (no history, and no progress or one that went backwards) it is ``interval_s``: the
fixed-interval polling this replaces. In callback mode polls are a backstop, the longest wait
apart.

The shares were chosen on the simulator's realistic mix (``dev/generation.py``), replayed
offline against the freshness target (the p95 delay to see an end within 1.5 intervals):
BENCHMARKS.md, "Paced polls", has the figures and what each share trades.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

# How many finished tasks of a model make a history worth trusting.
MIN_HISTORY: Final = 5
# Which quantile of a model's durations counts as "few end sooner": the tasks that end sooner
# are seen late (up to the wait), so few enough to leave most of the freshness target's 5 %.
EARLY_QUANTILE: Final = 0.02
# Shares of the time left that the engine waits: a margin for a history that drifts and for
# progress that is coarse (steps of 25) or noisy.
HISTORY_SHARE: Final = 0.8
PROGRESS_SHARE: Final = 0.6
# Points a figure may be behind the task's true progress (the API's progress is noisy, or in
# steps): the end is estimated from the figure plus these, so a 1 % seen in the first seconds
# does not promise minutes (a 52 s video was seen 60 s late so, benchmarks/polling.py).
PROGRESS_SLACK: Final = 3
# A task with no progress figure waits while at most this share of the model's tasks that ran
# as long went on to end within the wait: few enough that such tasks stay within the freshness
# target's 5 % of late ends, while a poll every interval would cost them minutes of polls.
NO_PROGRESS_SHARE: Final = 0.03
# The longest wait is shortened by how late the engine's recent polls went out, by at most
# this share: on a loaded machine a wait aimed at the max gap less an interval goes over it
# as soon as a poll is late by more than an interval, and an engine whose wire is full (where
# sooner polls cannot help) polls at most twice as often. Its effect alone was not measured
# apart (BENCHMARKS.md, 1,000 x 20: the gaps over 60 s came from handovers).
LATENESS_SHARE_MAX: Final = 0.5


@dataclass(frozen=True)
class ModelDurations:
    """What recent finished tasks of one model took, from their submit to their end (sorted)."""

    durations_s: tuple[float, ...]

    @classmethod
    def of(cls, durations_s: Sequence[float]) -> ModelDurations | None:
        """None for too short a history to trust. A duration of 0 (the task had ended when it
        was first polled) counts: it says how soon a task can end."""
        usable = sorted(d for d in durations_s if d >= 0)
        if len(usable) < MIN_HISTORY:
            return None
        return cls(tuple(usable))

    @property
    def count(self) -> int:
        return len(self.durations_s)

    @property
    def early_s(self) -> float:
        """EARLY_QUANTILE of the durations: few tasks end sooner."""
        return self.durations_s[int(EARLY_QUANTILE * (self.count - 1))]

    def quiet_for(self, elapsed_s: float, share: float) -> float:
        """The longest wait within which at most ``share`` of the tasks that ran ``elapsed_s``
        ended (0 when too few of them ran that long)."""
        ran_as_long = self.count - bisect.bisect_left(self.durations_s, elapsed_s)
        if ran_as_long * share < 1:
            return 0.0  # too few ran as long to say which share of them ends soon
        first_quiet = self.count - ran_as_long + int(share * ran_as_long)
        return self.durations_s[first_quiet] - elapsed_s


@dataclass(frozen=True)
class Pace:
    interval_s: float
    max_gap_s: float
    callbacks: bool = False

    @property
    def fixed(self) -> bool:
        """GRSAI_POLL_MAX_GAP_S at the interval: plain fixed-interval polling."""
        return self.max_gap_s <= self.interval_s

    def longest_wait(self, late_s: float = 0.0) -> float:
        """The longest wait after an answer: the max gap is between two polls, so an interval
        is kept for the round trips (gaps at 60.0-61 s measured without), and ``late_s`` (how
        late recent polls went out, up to LATENESS_SHARE_MAX of the wait) for a busy engine."""
        room = self.max_gap_s - self.interval_s
        return max(self.interval_s, room - min(late_s, LATENESS_SHARE_MAX * room))

    def may_hand_on(self, waited_s: float, due_in_s: float, taker_reads_within_s: float) -> bool:
        """Whether a task this engine polls may go to another engine now, which takes it at its
        next read (within ``taker_reads_within_s``): its gap stays within the max gap (due after
        that read, or waited so little that the read comes in time). Let go regardless, tasks
        paced near the max gap went over it (838 over 60 s as four runs joined a fifth,
        BENCHMARKS.md). With fixed-interval polling any handover exceeds the interval once."""
        if self.fixed or due_in_s >= taker_reads_within_s:
            return True
        return waited_s + taker_reads_within_s <= self.max_gap_s


def next_poll_in(
    pace: Pace,
    *,
    elapsed_s: float,
    progress: int | None,
    progress_before: int | None,
    durations: ModelDurations | None,
    progress_from_s: float | None = None,
    late_s: float = 0.0,
) -> float:
    """Seconds until the next poll of a task ``elapsed_s`` after its submit, whose last answer
    said ``progress`` (``progress_before`` the one before, when known), first seen
    ``progress_from_s`` after the submit (when known), by an engine whose polls went out up to
    ``late_s`` late in the last minute."""
    longest = pace.longest_wait(late_s)
    if pace.callbacks:
        return longest  # the callback tells the end; polls catch a lost one
    if pace.fixed:
        return pace.interval_s
    waits = []
    if durations is not None and elapsed_s < durations.early_s:
        waits.append(HISTORY_SHARE * (durations.early_s - elapsed_s))
    elif durations is not None and not progress:
        # No figure to pace by (a progress that never moves): the history's survivors tell.
        waits.append(durations.quiet_for(elapsed_s, NO_PROGRESS_SHARE))
    # Progress that went backwards says nothing to trust; one that stays put (coarse steps,
    # a pause) still gives a pace, which only slows as it stays.
    steady = progress_before is None or (progress is not None and progress >= progress_before)
    if progress is not None and 0 < progress < 100 and steady and elapsed_s > pace.interval_s:
        # Paced from when this figure appeared: progress in coarse steps (25, 50, 75) says
        # when the next step is due, not only how far it is.
        reached = progress_from_s if progress_from_s is not None else elapsed_s
        left = reached * 100 / min(100, progress + PROGRESS_SLACK) - elapsed_s
        # Past the end its own pace predicts: the end is near (or progress is stuck near it).
        waits.append(PROGRESS_SHARE * left if left > 0 else pace.interval_s)
    wait = min(waits) if waits else pace.interval_s
    return max(pace.interval_s, min(longest, wait))
