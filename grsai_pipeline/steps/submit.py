"""Submit waiting tasks with bounded concurrency.

Claims are taken just before sending and never for more tasks than there are free request
slots, so that a crash can leave at most ``GRSAI_MAX_CONCURRENCY`` tasks whose submit is in
doubt. Outcomes are recorded in groups to keep the database's share of the time small.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from grsai_pipeline.grsai.client import GrsaiClient
from grsai_pipeline.grsai.errors import ApiUnavailable, RateLimited, RunStopped
from grsai_pipeline.steps.runtime import StepContext
from grsai_pipeline.store.claims import (
    ClaimedTask,
    SubmitOutcome,
    claim_pending_tasks,
    record_submit_outcomes,
)


@dataclass
class SubmitReport:
    """What the submit loop did: tasks per resulting status (``processing``, ``failed``,
    ``pending`` to try again, ``released`` unsent, ``claim_lost`` to another runner), possible
    duplicates it made, and whether a 429 paused it."""

    tasks: Counter[str] = field(default_factory=Counter)
    possible_duplicates: int = 0
    rate_limited_pause: bool = False

    @property
    def submitted(self) -> int:
        return self.tasks["processing"]

    def add(self, other: SubmitReport) -> None:
        self.tasks.update(other.tasks)
        self.possible_duplicates += other.possible_duplicates
        self.rate_limited_pause |= other.rate_limited_pause


async def submit_waiting_tasks(
    ctx: StepContext, client: GrsaiClient, batch_ids: Sequence[str]
) -> SubmitReport:
    """Submit every waiting task of the batches that this runner can claim.

    Returns when none is left to claim. Stops claiming after a 429 that outlasted the retry
    budget (the rest waits for the next run) and raises RunStopped after a 401/403 or an
    upstream account without credits, once the requests already on the wire are recorded.
    """
    return await _SubmitLoop(ctx, client, batch_ids).run()


class _SubmitLoop:
    def __init__(self, ctx: StepContext, client: GrsaiClient, batch_ids: Sequence[str]) -> None:
        self.ctx = ctx
        self.client = client
        self.batch_ids = list(batch_ids)
        self.report = SubmitReport()
        self.stop: RunStopped | None = None
        self.finished: list[SubmitOutcome] = []

    async def run(self) -> SubmitReport:
        slots = self.ctx.settings.max_concurrency
        refill_at = max(1, slots // 4)
        in_flight: set[asyncio.Task[SubmitOutcome]] = set()
        while True:
            free = slots - len(in_flight)
            if not in_flight or free >= refill_at:
                await self._record_finished()
                if self.stop is None and not self.report.rate_limited_pause:
                    for task in await self._claim(free):
                        in_flight.add(asyncio.create_task(self._submit(task)))
            if not in_flight:
                break
            done, in_flight = await asyncio.wait(in_flight, return_when=asyncio.FIRST_COMPLETED)
            self.finished.extend(d.result() for d in done)
        if self.stop is not None:
            raise self.stop
        return self.report

    async def _claim(self, limit: int) -> list[ClaimedTask]:
        return await asyncio.to_thread(
            claim_pending_tasks,
            self.ctx.engine,
            self.batch_ids,
            self.ctx.runner_id,
            limit,
            lease_s=self.ctx.settings.claim_lease_s,
        )

    async def _submit(self, task: ClaimedTask) -> SubmitOutcome:
        if task.spec is None:
            return SubmitOutcome(task, invalid=task.invalid_reason)
        if self.stop is not None:
            return SubmitOutcome(task)
        try:
            answer = await self.client.submit(task.spec, webhook=self.ctx.webhook_for(task.id))
        except RunStopped as exc:
            self.stop = self.stop or exc
            return SubmitOutcome(task)
        except RateLimited:
            self.report.rate_limited_pause = True
            return SubmitOutcome(task)
        except ApiUnavailable as exc:
            return SubmitOutcome(task, exhausted=str(exc), uncertain_tries=exc.uncertain_tries)
        if answer.accepted:
            return SubmitOutcome(
                task, grsai_task_id=answer.task_id, uncertain_tries=answer.uncertain_tries
            )
        return SubmitOutcome(task, rejected=answer.msg, uncertain_tries=answer.uncertain_tries)

    async def _record_finished(self) -> None:
        if not self.finished:
            return
        outcomes, self.finished = self.finished, []
        tally = await asyncio.to_thread(
            record_submit_outcomes,
            self.ctx.engine,
            self.ctx.runner_id,
            outcomes,
            self.ctx.settings.retry_policy,
        )
        self.report.tasks.update(tally)
        self.report.possible_duplicates += sum(
            o.uncertain_tries + (1 if o.task.reclaimed else 0) for o in outcomes
        )
