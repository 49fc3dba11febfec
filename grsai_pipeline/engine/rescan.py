"""The engine's read of its scope, every few seconds: what other writers made since.

New batches and retries (waiting tasks per batch), batches a web app wrote as rows (taken in:
priced and reserved before anything is sent), cancelled batches (their waiting tasks failed
and refunded), the tasks at the API this engine polls from now on (its poll holds, and its
share of the free ones: store/polls.py), and the batches whose tasks are all final. Runs in
the engine's database thread; touches nothing of the event loop's.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy.engine import Connection
from sqlalchemy.engine import Engine as Database

from grsai_pipeline.domain.pacing import ModelDurations
from grsai_pipeline.domain.pricing import PriceTable
from grsai_pipeline.engine.scope import Scope
from grsai_pipeline.store.cancels import cancelled_among, sweep_cancelled
from grsai_pipeline.store.columns import utc_now
from grsai_pipeline.store.db import reading
from grsai_pipeline.store.durations import recent_durations
from grsai_pipeline.store.intake import awaiting_intake, take_in_batch
from grsai_pipeline.store.polls import over_share, poll_holds, share_of, take_polls
from grsai_pipeline.store.runners import Heartbeat
from grsai_pipeline.store.settlement import Settlement, settle_batch
from grsai_pipeline.store.tasks import (
    RemoteTask,
    tasks_at_api,
    unfinished_per_batch,
    waiting_per_batch,
)


@dataclass(frozen=True)
class Rescan:
    batches: Sequence[str]
    # Per batch, the tasks that may be claimed and sent now.
    waiting: dict[str, int]
    unfinished: dict[str, int]
    # The tasks at the API this engine polls, and those of them it did not know.
    ids_at_api: set[str]
    new_at_api: list[RemoteTask]
    handed_over: bool = False
    # Recent durations per model (store/durations.py), when this read looked again.
    durations: dict[str, ModelDurations] | None = None
    # When the read began (monotonic): the poll holds it took run from then, at the least.
    read_at: float = 0.0
    # Of ``ids_at_api``, those over this engine's share: to let go (the engine ends their holds
    # once it has stopped polling them: another engine may poll them at once).
    let_go: Sequence[str] = ()
    # When this engine's hold on each of ``ids_at_api`` ends, as the database says.
    held_until: dict[str, datetime] = field(default_factory=dict)


@dataclass(frozen=True)
class ScopeReader:
    """One engine's reads of its scope."""

    db: Database
    scope: Scope
    heartbeat: Heartbeat
    lease_s: float
    prices: PriceTable
    hold: timedelta

    def read(self, known: set[str], *, durations: bool = False) -> Rescan:
        """The scope now; ``known``: the tasks at the API the engine already follows; with
        ``durations``, how long recent tasks of each model took, too."""
        read_at = time.monotonic()
        with reading(self.db) as conn:
            handed_over = self.scope.handed_over(conn, self.heartbeat)
            batches = [] if handed_over else self.scope.batch_ids(conn)
            unpriced = awaiting_intake(conn, set(batches)) if batches else []
            waiting = self._waiting(conn, batches)
        if unpriced:
            for batch_id in unpriced:
                # Written as rows by a web app: priced and paid for before any of it is sent.
                take_in_batch(self.db, batch_id, self.prices)
            with reading(self.db) as conn:
                waiting = self._waiting(conn, batches)
        cancelled = self._sweep_cancelled([b for b, (_, n) in waiting.items() if n])
        claimable = {b: paid for b, (paid, _) in waiting.items() if b not in cancelled}
        with reading(self.db) as conn:
            unfinished = unfinished_per_batch(conn, batches) if batches else {}
        held_until, let_go = self._hold_polls(batches) if batches else ({}, [])
        ids = set(held_until)
        unknown = ids - known
        with reading(self.db) as conn:
            new = tasks_at_api(conn, unknown) if unknown else []
            paced = recent_durations(conn) if durations else None
        return Rescan(
            batches, claimable, unfinished, ids, new, handed_over, paced, read_at, let_go,
            held_until,
        )  # fmt: skip

    def settle_finished(self, seen: Rescan) -> list[Settlement]:
        """Settle every batch in scope whose tasks are all final (callbacks may have finished
        them without any poll of ours); the settlements that wrote entries."""
        settled = []
        for batch_id in seen.batches:
            if seen.unfinished.get(batch_id):
                continue
            settlement = settle_batch(self.db, batch_id)
            if settlement.settled and settlement.entries_written:
                settled.append(settlement)
        return settled

    def _hold_polls(self, batches: list[str]) -> tuple[dict[str, datetime], list[str]]:
        """The tasks at the API this engine polls from now on, with when its hold on each ends:
        those it holds, and as many of those nobody live holds as its share of every task at
        the API in its scope has room for (store/polls.py). Holding more than its share by
        more than a little, it names the excess to let go, for the engines under theirs."""
        runner_id, now = self.heartbeat.runner_id, utc_now()
        with reading(self.db) as conn:
            holds = poll_holds(conn, runner_id, batches, self.lease_s, now)
            engines = self.scope.engines(conn, self.lease_s)
        share = share_of(holds.at_api, engines)
        if excess := over_share(len(holds.mine_until), share):
            # The most recently polled go: due latest, they leave the taker the most time.
            return holds.mine_until, holds.mine[-excess:]
        room = share - len(holds.mine_until)
        if not holds.free or room <= 0:
            return holds.mine_until, []
        with self.db.begin() as conn:
            taken = take_polls(
                conn,
                runner_id,
                holds.free[:room],
                until=now + self.hold,
                lease_s=self.lease_s,
                now=now,
            )
        return holds.mine_until | dict.fromkeys(taken, now + self.hold), []

    def _waiting(self, conn: Connection, batches: list[str]) -> dict[str, tuple[int, int]]:
        if not batches:
            return {}
        return waiting_per_batch(conn, batches, self.lease_s, utc_now())

    def _sweep_cancelled(self, batch_ids: list[str]) -> set[str]:
        """Of the batches with waiting tasks, those cancelled: their waiting tasks fail and
        are refunded now, never claimed."""
        if not batch_ids:
            return set()
        with reading(self.db) as conn:
            cancelled = cancelled_among(conn, batch_ids)
        if cancelled:
            sweep_cancelled(self.db, sorted(cancelled), lease_s=self.lease_s)
        return cancelled
