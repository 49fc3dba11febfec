"""Task rows as the engine sees them: claiming waiting tasks, reading what is at the API, and
the one writer that applies the lifecycle's transitions.

A claim marks a task as "being submitted by runner R". Only tasks that are paid for (priced
by the pipeline, and free or holding an open ``reserve``: SPEC 1, "Paid before sent") and have
no claim, or the claim of a runner whose heartbeat went stale
(:mod:`grsai_pipeline.store.runners`), can be claimed; PostgreSQL skips rows another runner
has locked (``FOR UPDATE SKIP LOCKED``) and SQLite serialises writers with ``BEGIN IMMEDIATE``.
A claim ends when its runner records the submit's outcome.

:func:`apply_transitions` is the only code that writes a task's state after an event. Each
write carries the guard its transition names (status, remote task, claim), so a late answer,
an overlapping runner or a repeated callback leaves a task it no longer applies to alone.
Transitions of one shape are written with one statement: an executemany on SQLite, one
``UPDATE ... FROM unnest(arrays)`` on PostgreSQL (where psycopg2's executemany sends, and the
server plans, one UPDATE per row: 5.6 s of a 5,000-task run's profile, measured).
"""

from __future__ import annotations

import functools
from collections import defaultdict
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.engine import Connection

from grsai_pipeline.domain.lifecycle import TaskState, Transition
from grsai_pipeline.domain.states import (
    QUEUED,
    UNFINISHED_STATUSES,
    BatchStatus,
    TaskStatus,
)
from grsai_pipeline.domain.tasks import SORA_MODELS, TASK_FIELDS, TaskSpec, validate_task
from grsai_pipeline.errors import InvalidTask
from grsai_pipeline.store.columns import UtcDateTime
from grsai_pipeline.store.db import is_postgres
from grsai_pipeline.store.ledger import is_closed
from grsai_pipeline.store.runners import beating_since, live_after, live_runners
from grsai_pipeline.store.schema import batch_jobs, credit_ledger, pipeline_runners, video_tasks

t = video_tasks.c


def _paid_for() -> sa.ColumnElement[bool]:
    """Paid before sent (SPEC 1), as SQL on a ``video_tasks`` row: the pipeline priced it
    (store/intake.py) and it is free or its current reservation has a ``reserve`` entry that
    no ``charge`` or ``refund`` has closed yet."""
    reserves = credit_ledger.alias("paid_reserve")
    open_reserve = sa.exists().where(
        reserves.c.video_task_id == t.id,
        reserves.c.kind == sa.literal_column("'reserve'"),
        ~is_closed(reserves),
    )
    return sa.and_(t.priced_at.is_not(None), sa.or_(t.price == 0, open_reserve))


PAID_FOR: Final = _paid_for()


@dataclass(frozen=True)
class ClaimedTask:
    """A task this runner may submit now; ``spec`` is None when the stored row is invalid."""

    state: TaskState
    batch_job_id: str
    spec: TaskSpec | None
    invalid_reason: str | None
    # Taken over from a runner that died: its submit may have gone out already.
    reclaimed: bool = False


@dataclass(frozen=True)
class RemoteTask:
    """A task at the API, with what the lifecycle needs to judge an answer about it."""

    state: TaskState
    batch_job_id: str
    model: str | None
    # The last answer to a poll of it, by any runner (None: not polled since its submit).
    polled_at: datetime | None = None
    # When its current progress figure likely appeared, and when this engine last had an
    # answer about it (None: not known to this engine).
    progress_seen_at: datetime | None = None
    answered_at: datetime | None = None

    @property
    def is_sora(self) -> bool:
        return self.model in SORA_MODELS


_STATE_COLUMNS = (
    t.id, t.status, t.attempts, t.grsai_task_id, t.submitted_at, t.not_found_since, t.progress
)  # fmt: skip


def _state(row: Any) -> TaskState:
    return TaskState(
        id=row.id,
        status=row.status,
        attempts=row.attempts,
        grsai_task_id=row.grsai_task_id,
        submitted_at=row.submitted_at,
        not_found_since=row.not_found_since,
        progress=row.progress,
    )


# Statements of the hot path are built once: building one costs more than running it.
_CLAIMABLE = (
    sa.select(*_STATE_COLUMNS, t.batch_job_id, t.claimed_by, *map(t.get, TASK_FIELDS))
    .where(
        t.batch_job_id == sa.bindparam("batch_id"),
        t.status == TaskStatus.PENDING.value,
        PAID_FOR,
        # A cancelled batch is never submitted again (store/cancels.py).
        ~sa.exists().where(
            batch_jobs.c.id == sa.bindparam("batch_id"), batch_jobs.c.cancelled_at.is_not(None)
        ),
        sa.or_(
            t.claimed_by.is_(None),
            t.claimed_by.not_in(
                sa.select(pipeline_runners.c.runner_id).where(
                    beating_since(sa.bindparam("live_after", type_=UtcDateTime()))
                )
            ),
        ),
    )
    .order_by(t.batch_index)
    .limit(sa.bindparam("quota", type_=sa.Integer()))
    # NO KEY UPDATE: the ledger's foreign-key checks on these rows need not wait for us.
    .with_for_update(skip_locked=True, key_share=True)
)
_TAKE = (
    video_tasks.update()
    .where(t.id.in_(sa.bindparam("w_ids", expanding=True)))
    .values(
        claimed_by=sa.bindparam("v_runner"),
        claimed_at=sa.bindparam("v_now", type_=UtcDateTime()),
        updated_at=sa.bindparam("v_now", type_=UtcDateTime()),
        possible_duplicates=t.possible_duplicates + sa.bindparam("v_reclaimed"),
    )
)
_START_BATCH = (
    batch_jobs.update()
    .where(batch_jobs.c.id == sa.bindparam("w_batch"), batch_jobs.c.status == "pending")
    .values(
        status=BatchStatus.RUNNING.value,
        updated_at=sa.bindparam("v_now", type_=UtcDateTime()),
    )
)


def claim_waiting_tasks(
    conn: Connection,
    runner_id: str,
    quotas: Sequence[tuple[str, int]],
    *,
    lease_s: float,
    now: datetime,
    running: Collection[str] = (),
) -> list[ClaimedTask]:
    """Claim up to ``n`` pending tasks of each ``(batch, n)``, lowest ``batch_index`` first,
    and mark their batches ``running`` (but those the caller knows are: ``running``).

    The caller decides the quotas (that is where fairness between batches lives). A task whose
    claim belongs to a runner without a heartbeat for ``lease_s`` is taken over.
    """
    since = live_after(lease_s, now)
    rows: list[Any] = []
    for batch_id, quota in quotas:
        if quota > 0:
            rows += conn.execute(
                _CLAIMABLE, {"batch_id": batch_id, "live_after": since, "quota": quota}
            ).all()
    if not rows:
        return []
    for reclaimed in (False, True):
        ids = [row.id for row in rows if (row.claimed_by is not None) == reclaimed]
        params = {"v_runner": runner_id, "v_now": now, "v_reclaimed": int(reclaimed)}
        for start in range(0, len(ids), _CHUNK):
            conn.execute(_TAKE, {**params, "w_ids": ids[start : start + _CHUNK]})
    started = sorted({row.batch_job_id for row in rows} - set(running))
    if started:
        conn.execute(_START_BATCH, [{"w_batch": b, "v_now": now} for b in started])
    return [_claimed(row) for row in rows]


def release_claims_not_held(
    conn: Connection, runner_id: str, held: Collection[str], now: datetime
) -> int:
    """Release the claims of ``runner_id`` on waiting tasks it does not hold in memory
    (``held``): a claim whose transaction committed while its connection was cut, so its
    runner never learnt of it. Never sent, so no duplicate: anyone may claim them again."""
    query = (
        video_tasks.update()
        .where(
            t.claimed_by == runner_id,
            t.status == TaskStatus.PENDING.value,
            t.id.not_in(sorted(held)) if held else sa.true(),
        )
        .values(claimed_by=None, claimed_at=None, updated_at=now)
    )
    return max(0, conn.execute(query).rowcount)


def _claimed(row: Any) -> ClaimedTask:
    spec, reason = validate_row(row)
    return ClaimedTask(_state(row), row.batch_job_id, spec, reason, row.claimed_by is not None)


def validate_row(row: Any) -> tuple[TaskSpec | None, str | None]:
    """A stored task checked against SPEC 2 again (other writers insert rows): its spec, or
    None and the ``INVALID_INPUT:`` message."""
    try:
        stored = {name: getattr(row, name) for name in TASK_FIELDS}
        return validate_task(stored, allow_unknown_fields=True), None
    except InvalidTask as exc:
        return None, str(exc)


def apply_transitions(
    conn: Connection,
    transitions: Sequence[Transition],
    *,
    runner_id: str | None,
    now: datetime,
) -> int:
    """Write the transitions in the caller's transaction; returns how many rows they changed.

    Rows whose guard no longer holds are left as they are (and not counted).
    """
    if is_postgres(conn) and transitions:
        # Lock the rows in one order (by id) before writing them in groups: two runners writing
        # the same tasks in the order their answers came would deadlock (issue 10's flaky test).
        ids = sorted({tr.task_id for tr in transitions})
        conn.execute(
            sa.select(t.id).where(t.id.in_(ids)).order_by(t.id).with_for_update(key_share=True)
        ).all()
    written = 0
    postgres = is_postgres(conn)
    for wave in _waves(transitions):
        shapes: dict[tuple[Any, ...], list[Transition]] = defaultdict(list)
        for transition in wave:
            shape = (
                tuple(sorted(transition.change)),
                transition.when_status,
                transition.when_remote_id is not None,
                transition.ends_claim,
                transition.possible_duplicates > 0,
            )
            shapes[shape].append(transition)
        for shape, group in shapes.items():
            params = [_params_of(tr, runner_id, now) for tr in group]
            if postgres and len(params) > 1:
                names = tuple(params[0])
                statement = _guarded_update_from(*shape, names)
                arrays = {name: [row[name] for row in params] for name in names}
                result = conn.execute(statement, arrays)
            else:
                result = conn.execute(
                    _guarded_update(*shape), params[0] if len(params) == 1 else params
                )
            written += max(0, result.rowcount)
    return written


# Ids per IN list: well under SQLite's and psycopg2's limits on bound parameters.
_CHUNK = 500


def _waves(transitions: Sequence[Transition]) -> list[list[Transition]]:
    """Split so that no task appears twice in a wave: a task's later transition (a poll
    answer) is written after its earlier one (the submit it follows), never grouped before."""
    waves: list[list[Transition]] = [[]]
    seen: set[str] = set()
    for transition in transitions:
        if transition.task_id in seen:
            waves.append([])
            seen = set()
        waves[-1].append(transition)
        seen.add(transition.task_id)
    return waves


@functools.lru_cache(maxsize=256)
def _guarded_update(
    columns: tuple[str, ...],
    statuses: Collection[str],
    by_remote: bool,
    ends_claim: bool,
    counts_duplicates: bool,
) -> sa.Update:
    """One task per execution (an executemany takes many): its parameters are bound."""
    shape = (columns, statuses, by_remote, ends_claim, counts_duplicates)
    return _guarded_write(*shape, lambda name: sa.bindparam(name, type_=_param_type(name)))


@functools.lru_cache(maxsize=256)
def _guarded_update_from(
    columns: tuple[str, ...],
    statuses: Collection[str],
    by_remote: bool,
    ends_claim: bool,
    counts_duplicates: bool,
    names: tuple[str, ...],
) -> sa.Update:
    """Many tasks in one statement (PostgreSQL): each parameter of :func:`_params_of` comes
    as an array, ``unnest`` makes the rows, joined to their task by id. One statement per
    shape whatever the number of rows, so it is compiled once."""
    arrays = [sa.cast(sa.bindparam(name), ARRAY(_param_type(name))) for name in names]
    given = (
        sa.func.unnest(*arrays)
        .table_valued(*(sa.column(name, _param_type(name)) for name in names))
        .render_derived(name="given")
    )
    shape = (columns, statuses, by_remote, ends_claim, counts_duplicates)
    return _guarded_write(*shape, lambda name: given.c[name])


def _guarded_write(
    columns: tuple[str, ...],
    statuses: Collection[str],
    by_remote: bool,
    ends_claim: bool,
    counts_duplicates: bool,
    param: Callable[[str], Any],
) -> sa.Update:
    """The UPDATE of one shape of transition, with its guard; ``param`` gives the value of
    each parameter of :func:`_params_of` by name."""
    values: dict[str, Any] = {name: param(f"v_{name}") for name in columns}
    values["updated_at"] = param("v_updated_at")
    guard = [
        t.id == param("w_id"),
        # Inline statuses (our own constants): an expanding IN cannot take part in executemany.
        t.status.in_([sa.literal_column(f"'{_status_word(s)}'") for s in sorted(statuses)]),
    ]
    if by_remote:
        guard.append(t.grsai_task_id == param("w_remote"))
    if ends_claim:
        guard.append(t.claimed_by == param("w_runner"))
        values |= {"claimed_by": None, "claimed_at": None}
    if counts_duplicates:
        values["possible_duplicates"] = t.possible_duplicates + param("v_duplicates")
    return video_tasks.update().where(*guard).values(values)


def _param_type(name: str) -> Any:
    """The column type of one of :func:`_params_of`'s parameters."""
    column = {"w_id": "id", "w_remote": "grsai_task_id", "w_runner": "claimed_by"}.get(name)
    if column is None:
        column = name.removeprefix("v_")
        if column == "duplicates":
            return sa.Integer()
    return video_tasks.c[column].type


def _status_word(status: str) -> str:
    if not status.isalpha():
        raise ValueError(f"not a task status: {status!r}")
    return status


def _params_of(transition: Transition, runner_id: str | None, now: datetime) -> dict[str, Any]:
    params = {f"v_{name}": value for name, value in transition.change.items()}
    params |= {"v_updated_at": now, "w_id": transition.task_id}
    if transition.when_remote_id is not None:
        params["w_remote"] = transition.when_remote_id
    if transition.ends_claim:
        params["w_runner"] = runner_id
    if transition.possible_duplicates > 0:
        params["v_duplicates"] = transition.possible_duplicates
    return params


def tasks_at_api(conn: Connection, task_ids: Collection[str]) -> list[RemoteTask]:
    """These tasks, those of them still waiting on the API (``processing``)."""
    found = []
    ids = sorted(task_ids)
    for start in range(0, len(ids), _CHUNK):
        query = sa.select(*_STATE_COLUMNS, t.batch_job_id, t.model, t.polled_at).where(
            t.id.in_(ids[start : start + _CHUNK]),
            t.status == TaskStatus.PROCESSING.value,
            t.grsai_task_id.is_not(None),
        )
        found += [_remote(row) for row in conn.execute(query)]
    return found


def _remote(row: Any) -> RemoteTask:
    polled_at = getattr(row, "polled_at", None)
    return RemoteTask(_state(row), row.batch_job_id, row.model, polled_at)


def task_for_callback(conn: Connection, task_id: str) -> RemoteTask | None:
    """One task as a callback about it needs it; None when there is no such task."""
    row = conn.execute(
        sa.select(*_STATE_COLUMNS, t.batch_job_id, t.model).where(t.id == task_id)
    ).one_or_none()
    return None if row is None else _remote(row)


def waiting_per_batch(
    conn: Connection, batch_ids: Sequence[str] | None, lease_s: float, now: datetime
) -> dict[str, tuple[int, int]]:
    """Per batch (of all batches when None), the tasks that wait to be submitted with no
    claim of a live runner: ``(claimable, waiting)``, where claimable ones are also paid for
    (a cancel fails every waiting one; only claimable ones may be sent)."""
    live = live_runners(lease_s, now)
    claimable = sa.case((sa.and_(t.status == TaskStatus.PENDING.value, PAID_FOR), 1), else_=0)
    query = sa.select(t.batch_job_id, sa.func.sum(claimable), sa.func.count()).where(
        t.status.in_([TaskStatus.PENDING.value, QUEUED]),
        sa.or_(t.claimed_by.is_(None), t.claimed_by.not_in(live)),
    )
    if batch_ids is not None:
        query = query.where(t.batch_job_id.in_(batch_ids))
    return {
        batch_id: (int(paid or 0), int(count))
        for batch_id, paid, count in conn.execute(query.group_by(t.batch_job_id))
    }


def unfinished_per_batch(conn: Connection, batch_ids: Sequence[str] | None) -> dict[str, int]:
    """How many tasks are not final yet, per batch (of all batches when None)."""
    query = sa.select(t.batch_job_id, sa.func.count()).where(
        t.status.in_(sorted(UNFINISHED_STATUSES))
    )
    if batch_ids is not None:
        query = query.where(t.batch_job_id.in_(batch_ids))
    return {b: int(n) for b, n in conn.execute(query.group_by(t.batch_job_id))}
