"""Who polls a task at the API: decided per task, in the database (SPEC 4), never per batch
from Dagster's run state.

A task at the API is held by one runner (``polled_by``) until ``poll_held_until``. The holder
renews the hold each time it writes a poll's answer (one interval and a margin ahead: see
:func:`hold_for`), and takes it when its submit is accepted. Any live engine whose scope covers
the task may take it once the hold has ended or its holder stopped beating (a run that is
queued, slow or dead never leaves a task waiting), so several engines share the open tasks
without polling one task twice in an interval. An engine that finds its task taken by another
forgets it at its next read of the database.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from grsai_pipeline.domain.lifecycle import Transition
from grsai_pipeline.domain.states import TaskStatus
from grsai_pipeline.store.db import is_postgres
from grsai_pipeline.store.runners import live_runners
from grsai_pipeline.store.schema import video_tasks

t = video_tasks.c

# Ids per IN list: well under SQLite's and psycopg2's limits on bound parameters.
_CHUNK = 500


def _chunks(
    conn: Connection, task_ids: Sequence[str], *, skip_locked: bool
) -> Iterator[sa.ColumnElement[bool]]:
    """The ids as conditions of ``_CHUNK`` each; with ``skip_locked``, on PostgreSQL, only the
    rows no other transaction holds (never waited for: no deadlock with the guarded writes)."""
    for start in range(0, len(task_ids), _CHUNK):
        chunk = t.id.in_(task_ids[start : start + _CHUNK])
        if skip_locked and is_postgres(conn):
            free = sa.select(t.id).where(chunk).with_for_update(skip_locked=True, key_share=True)
            chunk = t.id.in_(free.scalar_subquery())
        yield chunk


def hold_for(poll_interval_s: float, lease_s: float) -> timedelta:
    """How long a poll's answer holds its task: the next poll is due an interval later, and a
    holder late by half a lease (when a runner that cannot renew its heartbeat stops sending)
    lets another engine take it."""
    return timedelta(seconds=poll_interval_s + lease_s / 2)


def _free(runner_id: str, lease_s: float, now: datetime) -> sa.ColumnElement[bool]:
    """A task at the API that ``runner_id`` may take: nobody holds it, its hold ended, or its
    holder stopped beating."""
    return sa.and_(
        t.status == TaskStatus.PROCESSING.value,
        t.grsai_task_id.is_not(None),
        sa.or_(
            t.polled_by.is_(None),
            t.polled_by == runner_id,
            t.poll_held_until < now,
            t.polled_by.not_in(live_runners(lease_s, now)),
        ),
    )


@dataclass(frozen=True)
class PollHolds:
    """Of the tasks at the API in a scope: those this runner holds and those free to take, each
    the longest-waiting first; and how many there are in all, whoever holds them."""

    # Those this runner holds, with when each hold ends (the hold of a task this engine no
    # longer knew of ends then, not a hold's length after this read).
    mine_until: dict[str, datetime]
    free: list[str]
    at_api: int

    @property
    def mine(self) -> list[str]:
        return list(self.mine_until)


def poll_holds(
    conn: Connection, runner_id: str, batch_ids: Sequence[str], lease_s: float, now: datetime
) -> PollHolds:
    waited_since = sa.func.coalesce(t.polled_at, t.submitted_at)
    query = (
        sa.select(t.id, t.polled_by, t.poll_held_until)
        .where(t.batch_job_id.in_(batch_ids), _free(runner_id, lease_s, now))
        .order_by(waited_since, t.id)
    )
    free: list[str] = []
    mine_until: dict[str, datetime] = {}
    for task_id, holder, until in conn.execute(query):
        if holder == runner_id and until is not None and until >= now:
            mine_until[task_id] = until
        else:
            free.append(task_id)
    at_api = sa.select(sa.func.count()).where(
        t.batch_job_id.in_(batch_ids),
        t.status == TaskStatus.PROCESSING.value,
        t.grsai_task_id.is_not(None),
    )
    return PollHolds(mine_until, free, int(conn.scalar(at_api) or 0))


def share_of(tasks: int, engines: int) -> int:
    """How many of ``tasks`` one of ``engines`` engines polls: an even share, so that several
    re-polling runs divide the open tasks between them."""
    return math.ceil(tasks / max(1, engines))


def over_share(held: int, share: int) -> int:
    """How many of its ``held`` polls an engine lets go, holding more than its ``share`` by
    more than a twentieth (a handover, a dead engine's tasks taken first by one): one engine's
    wire must not carry twice its part while the others idle (issue 26, measured)."""
    return held - share if held > share + max(10, share // 20) else 0


def release_polls(
    conn: Connection, runner_id: str, task_ids: Sequence[str], *, now: datetime
) -> None:
    """End ``runner_id``'s hold of these tasks now: the next engine under its share takes them,
    due from their last answer (a row another writer holds right now keeps its hold)."""
    for chunk in _chunks(conn, task_ids, skip_locked=True):
        conn.execute(
            video_tasks.update()
            .where(chunk, t.polled_by == runner_id)
            .values(poll_held_until=now - timedelta(seconds=1))
        )


def take_polls(
    conn: Connection,
    runner_id: str,
    task_ids: Sequence[str],
    *,
    until: datetime,
    lease_s: float,
    now: datetime,
) -> set[str]:
    """Hold these tasks' polls for ``runner_id`` until ``until``, those still free; returns
    the ones it got (another engine may have taken some since they were read)."""
    taken: set[str] = set()
    # Rows another engine is taking right now are its own: skipped, never waited for.
    for chunk in _chunks(conn, task_ids, skip_locked=True):
        statement = (
            video_tasks.update()
            .where(chunk, _free(runner_id, lease_s, now))
            .values(polled_by=runner_id, poll_held_until=until)
            .returning(t.id)
        )
        taken.update(conn.scalars(statement))
    return taken


def renew_holds(
    conn: Connection,
    runner_id: str,
    task_ids: Collection[str],
    *,
    until: datetime,
    polled_at: datetime | None,
) -> set[str]:
    """Hold these tasks' polls for ``runner_id`` until ``until`` (and, for a poll's answer,
    say when it came: ``polled_at``), but those another runner holds now; returns the ones
    renewed (the others: another engine took them, or a writer had the row locked).

    Never waits for a lock (so it cannot deadlock with the guarded writes): a row another
    writer holds keeps its older hold this once."""
    values: dict[str, object] = {"polled_by": runner_id, "poll_held_until": until}
    if polled_at is not None:
        values["polled_at"] = polled_at
    ours = sa.or_(t.polled_by.is_(None), t.polled_by == runner_id)
    renewed: set[str] = set()
    for chunk in _chunks(conn, sorted(task_ids), skip_locked=True):
        statement = video_tasks.update().where(chunk, ours).values(values).returning(t.id)
        renewed.update(conn.scalars(statement))
    return renewed


def held_on_acceptance(transition: Transition, runner_id: str, until: datetime) -> Transition:
    """An accepted submit's write, which also gives ``runner_id`` (whose submit it was) the new
    remote task's polls until ``until``; a hold of the task's earlier remote task, if any, is
    void. Part of the same guarded UPDATE: a second statement per submit cost 3.8 % of a
    10,000-task batch's CPU (py-spy)."""
    return replace(
        transition, change={**transition.change, "polled_by": runner_id, "poll_held_until": until}
    )
