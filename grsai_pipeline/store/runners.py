"""Runners: who is working on the batches right now, as their heartbeats say.

Every engine registers a row and renews ``heartbeat_at`` from a thread of its own while it
works. A claim is held while its runner's heartbeat is younger than the lease
(``GRSAI_CLAIM_LEASE_S``); after that, another runner may take the task over. A live runner
that cannot renew its heartbeat stops sending (see :class:`Heartbeat`), so a slow submit of a
live runner is never taken over and sent twice.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from datetime import datetime, timedelta
from types import TracebackType
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import SQLAlchemyError

from grsai_pipeline.store import outages
from grsai_pipeline.store.columns import utc_now
from grsai_pipeline.store.schema import pipeline_runners

log = logging.getLogger(__name__)

# Rows of runners gone for this long are deleted when a runner starts.
FORGET_AFTER = timedelta(days=1)


def beating_since(since: Any) -> sa.ColumnElement[bool]:
    """The liveness rule, written once: a runner is live while its last heartbeat is at or
    after ``since`` (now minus ``GRSAI_CLAIM_LEASE_S``: :func:`live_after`; or a bound
    parameter standing for it)."""
    beating: sa.ColumnElement[bool] = pipeline_runners.c.heartbeat_at >= since
    return beating


def live_after(lease_s: float, now: datetime | None = None) -> datetime:
    return (now or utc_now()) - timedelta(seconds=lease_s)


def live_runners(lease_s: float, now: datetime | None = None) -> sa.Select[tuple[str]]:
    """The ids of the live runners, as a subquery for a claim's or a cancel's condition."""
    return sa.select(pipeline_runners.c.runner_id).where(beating_since(live_after(lease_s, now)))


def open_batch_runners(conn: Connection, lease_s: float) -> int:
    """How many live runners follow every open batch (no batch of their own)."""
    r = pipeline_runners.c
    query = sa.select(sa.func.count()).where(
        r.batch_job_id.is_(None), beating_since(live_after(lease_s))
    )
    return int(conn.scalar(query) or 0)


def live_runner_ids(conn: Connection, lease_s: float) -> set[str]:
    """Every runner whose heartbeat is fresh (a run's engine registers with the run's id)."""
    return set(conn.scalars(live_runners(lease_s)))


def successors_live(conn: Connection, runner: Heartbeat, lease_s: float) -> int:
    """How many runners of every open batch (no batch of their own) that started after
    ``runner`` are alive: the re-polling runs to which ``runner`` hands over."""
    r = pipeline_runners.c
    query = sa.select(sa.func.count()).where(
        r.batch_job_id.is_(None),
        r.runner_id != runner.runner_id,
        r.started_at > runner.started_at,
        beating_since(live_after(lease_s)),
    )
    return int(conn.scalar(query) or 0)


class Heartbeat:
    """A runner's row and the thread that renews it; ``with Heartbeat(...) as beat:``.

    ``beat.fresh`` is False once the last renewal is older than half the lease: the runner must
    then stop sending, because its claims may soon be taken over.
    """

    def __init__(
        self, engine: Engine, runner_id: str, lease_s: float, batch_id: str | None = None
    ) -> None:
        self.engine = engine
        self.runner_id = runner_id
        self.lease_s = lease_s
        self.batch_id = batch_id
        self.every_s = max(0.05, lease_s / 6)
        self.started_at = utc_now()
        self._renewed = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._renew_until_stopped, name=f"heartbeat-{runner_id[:8]}", daemon=True
        )

    @property
    def fresh(self) -> bool:
        return self.stale_for < self.lease_s / 2

    @property
    def stale_for(self) -> float:
        """Seconds since the last renewal."""
        return time.monotonic() - self._renewed

    def __enter__(self) -> Heartbeat:
        now = self.started_at = utc_now()
        r = pipeline_runners.c
        with self.engine.begin() as conn:
            conn.execute(pipeline_runners.delete().where(r.heartbeat_at < now - FORGET_AFTER))
            conn.execute(pipeline_runners.delete().where(r.runner_id == self.runner_id))
            conn.execute(
                pipeline_runners.insert().values(
                    runner_id=self.runner_id,
                    batch_job_id=self.batch_id,
                    started_at=now,
                    heartbeat_at=now,
                    host=socket.gethostname(),
                    pid=os.getpid(),
                )
            )
        self._renewed = time.monotonic()
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        try:
            with self.engine.begin() as conn:
                conn.execute(
                    pipeline_runners.delete().where(pipeline_runners.c.runner_id == self.runner_id)
                )
        except SQLAlchemyError as error:  # the row then simply goes stale
            log.warning("could not unregister runner %s: %s", self.runner_id, error)

    def _renew_until_stopped(self) -> None:
        failing_since: float | None = None
        while not self._stop.wait(self.every_s):
            try:
                with self.engine.begin() as conn:
                    conn.execute(
                        pipeline_runners.update()
                        .where(pipeline_runners.c.runner_id == self.runner_id)
                        .values(heartbeat_at=utc_now())
                    )
            except SQLAlchemyError as error:
                if failing_since is None:  # said once, not every few seconds of an outage
                    failing_since = time.monotonic()
                    log.warning(
                        "runner %s cannot renew its heartbeat (%s): it stops sending until "
                        "it can", self.runner_id, outages.reason(error),
                    )  # fmt: skip
                continue
            if failing_since is not None:
                log.warning(
                    "runner %s renewed its heartbeat again after %.1f s",
                    self.runner_id, time.monotonic() - failing_since,
                )  # fmt: skip
                failing_since = None
            self._renewed = time.monotonic()
