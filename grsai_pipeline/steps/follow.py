"""Follow tasks at the API to their end: poll, record, resubmit what may be retried.

A round polls every task that is due (submitted at least one poll interval ago), records the
answers in groups, then submits the tasks that went back to ``pending`` for a new attempt.
Rounds repeat every ``GRSAI_POLL_INTERVAL_S`` until no task is unfinished or the time budget
is spent. A poll that fails (network, 5xx, 429, not JSON) leaves its task for the next round.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import timedelta

from grsai_pipeline.domain.states import TaskChange, after_poll, normalise
from grsai_pipeline.grsai.client import GrsaiClient
from grsai_pipeline.grsai.errors import ApiUnavailable, RateLimited, RunStopped
from grsai_pipeline.steps.runtime import StepContext
from grsai_pipeline.steps.submit import SubmitReport, submit_waiting_tasks
from grsai_pipeline.store.batches import count_unfinished
from grsai_pipeline.store.columns import utc_now
from grsai_pipeline.store.db import reading
from grsai_pipeline.store.polling import PollTarget, processing_tasks, record_poll_changes

RECORD_EVERY = 250


@dataclass
class FollowReport:
    """What following did: rounds, polls, answers by outcome, resubmissions."""

    rounds: int = 0
    polls: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)
    unanswered: int = 0
    unfinished: int = 0
    budget_spent: bool = False
    resubmit: SubmitReport = field(default_factory=SubmitReport)


def _unfinished(ctx: StepContext, batch_ids: Sequence[str]) -> int:
    with reading(ctx.engine) as conn:
        return count_unfinished(conn, batch_ids)


async def follow_tasks(
    ctx: StepContext, client: GrsaiClient, batch_ids: Sequence[str], budget_s: float
) -> FollowReport:
    """Poll the batches' processing tasks until all are final or ``budget_s`` has passed.

    Always runs at least one round. Raises RunStopped (401/403, upstream without credits)
    after recording the answers already received.
    """
    report = FollowReport()
    interval = ctx.settings.poll_interval_s
    deadline = time.monotonic() + budget_s
    while True:
        started = time.monotonic()
        report.rounds += 1
        due_before = utc_now() - timedelta(seconds=interval)
        targets = await asyncio.to_thread(processing_tasks, ctx.engine, batch_ids)
        due = [t for t in targets if t.submitted_at is None or t.submitted_at <= due_before]
        await _poll_round(ctx, client, due, report, deadline)
        report.resubmit.add(await submit_waiting_tasks(ctx, client, batch_ids))
        report.unfinished = await asyncio.to_thread(_unfinished, ctx, batch_ids)
        if not report.unfinished:
            return report
        if time.monotonic() + interval > deadline:
            report.budget_spent = True
            return report
        await asyncio.sleep(max(0.0, interval - (time.monotonic() - started)))


async def _poll_round(
    ctx: StepContext,
    client: GrsaiClient,
    targets: list[PollTarget],
    report: FollowReport,
    deadline: float,
) -> None:
    queue = iter(targets)
    changes: list[tuple[PollTarget, TaskChange]] = []
    writing = asyncio.Lock()
    stop: list[RunStopped] = []

    async def record() -> None:
        async with writing:
            batch = changes[:]
            changes.clear()
            if batch:
                await asyncio.to_thread(record_poll_changes, ctx.engine, batch)

    async def worker() -> None:
        for target in queue:
            if stop:
                return
            try:
                change = await _poll_one(ctx, client, target, report, deadline)
            except RunStopped as exc:
                stop.append(exc)
                return
            if change is not None:
                changes.append((target, change))
            if len(changes) >= RECORD_EVERY:
                await record()

    await asyncio.gather(*(worker() for _ in range(ctx.settings.max_concurrency)))
    await record()
    if stop:
        raise stop[0]


async def _poll_one(
    ctx: StepContext,
    client: GrsaiClient,
    target: PollTarget,
    report: FollowReport,
    deadline: float,
) -> TaskChange | None:
    report.polls += 1
    try:
        result = await client.poll(target.grsai_task_id, is_sora=target.is_sora, deadline=deadline)
    except (ApiUnavailable, RateLimited):
        report.unanswered += 1
        return None
    outcome = normalise(result)
    report.outcomes[outcome.state] += 1
    return after_poll(
        outcome,
        attempts=target.attempts,
        submitted_at=target.submitted_at,
        not_found_since=target.not_found_since,
        now=utc_now(),
        policy=ctx.settings.retry_policy,
    )
