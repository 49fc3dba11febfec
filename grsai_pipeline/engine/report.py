"""What a run of the engine did, in total and per batch, for logs and Dagster metadata."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from grsai_pipeline.domain.lifecycle import Accepted, Transition
from grsai_pipeline.domain.states import TaskStatus
from grsai_pipeline.store.settlement import Settlement


@dataclass
class BatchActivity:
    """One batch's share of a run: tasks the API accepted, answers, and tasks that ended."""

    accepted: int = 0
    succeeded: int = 0
    failed: int = 0
    retried: int = 0


@dataclass
class EngineReport:
    submits: int = 0
    polls: int = 0
    unanswered: int = 0
    possible_duplicates: int = 0
    rate_limited: bool = False
    budget_spent: bool = False
    # A newer runner took the scope over (the next re-polling run): this one ended early,
    # having handed its tasks over.
    handed_over: bool = False
    # Handing over, and still sending the polls due soon: run it again at once.
    handing_over: bool = False
    # Decided writes whose guard no longer held (another writer moved the task first).
    stale_writes: int = 0
    # Polls not sent because this engine came to them after its hold on the task had ended.
    polls_left_past_hold: int = 0
    # As the last read of the scope found them.
    unfinished: int = 0
    waiting_claimable: int = 0
    batches: dict[str, BatchActivity] = field(default_factory=dict)
    # Batches this run settled (each at the read that found its tasks all final).
    settled: list[Settlement] = field(default_factory=list)
    # What the client did during the run: requests, retries, 429 answers.
    api_calls: int = 0
    api_retries: int = 0
    api_429s: int = 0
    # Times the application database could not be reached (a failover), and for how long.
    database_outages: int = 0
    database_outage_s: float = 0.0
    # The longest read of the scope (wall time): on a loaded machine it sets how seldom the
    # engine reads (engine/loop.py, READ_PERIOD_MAX_S).
    longest_read_s: float = 0.0

    def batch(self, batch_id: str) -> BatchActivity:
        if batch_id not in self.batches:
            self.batches[batch_id] = BatchActivity()
        return self.batches[batch_id]

    def count(self, batch_id: str, transition: Transition) -> None:
        activity = self.batch(batch_id)
        status = transition.status
        if isinstance(transition.event, Accepted):
            activity.accepted += 1
        elif status == TaskStatus.SUCCEEDED.value:
            activity.succeeded += 1
        elif status == TaskStatus.FAILED.value:
            activity.failed += 1
        elif status == TaskStatus.PENDING.value:
            activity.retried += 1

    def api_metadata(self) -> dict[str, int]:
        return {
            "api_calls": self.api_calls,
            "api_retries": self.api_retries,
            "api_429s": self.api_429s,
        }

    @property
    def accepted(self) -> int:
        return sum(b.accepted for b in self.batches.values())

    def outcomes(self) -> Counter[str]:
        totals: Counter[str] = Counter()
        for activity in self.batches.values():
            totals.update(
                accepted=activity.accepted,
                succeeded=activity.succeeded,
                failed=activity.failed,
                retried=activity.retried,
            )
        return +totals
