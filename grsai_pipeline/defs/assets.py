"""The four partitioned assets of a batch: pending_tasks -> submitted_tasks -> polled_results
-> settled_ledger. State lives in the application database, so each asset always materializes
with metadata (never a value through an IO manager)."""

# No "from __future__ import annotations": Dagster reads these hints at definition time.
import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

import dagster as dg

from grsai_pipeline.config import SettingsError
from grsai_pipeline.defs.metadata import api_metadata, batch_metadata
from grsai_pipeline.defs.partitions import batches
from grsai_pipeline.defs.resources import AppDatabase, GrsaiApi
from grsai_pipeline.grsai.client import ApiStats, GrsaiClient
from grsai_pipeline.grsai.errors import RunStopped
from grsai_pipeline.steps.follow import follow_tasks
from grsai_pipeline.steps.runtime import StepContext
from grsai_pipeline.steps.submit import submit_waiting_tasks
from grsai_pipeline.store.audit import ledger_problems, succeeded_without_video
from grsai_pipeline.store.batches import get_batch
from grsai_pipeline.store.errors import UnknownBatch
from grsai_pipeline.store.retries import prepare_batch
from grsai_pipeline.store.settlement import settle_batch

GROUP = "batch_pipeline"
API_POOL = "grsai_api"
T = TypeVar("T")

LEDGER_CHECK = dg.AssetCheckSpec("ledger_balances", asset="settled_ledger")
VIDEO_CHECK = dg.AssetCheckSpec("succeeded_tasks_have_video_url", asset="polled_results")


class FollowConfig(dg.Config):
    """``budget_s`` caps in-run polling; unset means ``GRSAI_POLL_BUDGET_S``."""

    budget_s: float | None = None


def _step_context(
    context: dg.AssetExecutionContext, app_db: AppDatabase, grsai: GrsaiApi
) -> StepContext:
    return StepContext(
        engine=app_db.engine(),
        settings=grsai.settings(),
        runner_id=context.run.run_id,
        log=context.log,
    )


def _call_api(step: StepContext, work: Callable[[GrsaiClient], Awaitable[T]]) -> tuple[T, ApiStats]:
    """Run async API work with one client; what it did, and the client's counters.

    A stopped run (bad key, no upstream credits, no key at all) fails without retries.
    """

    async def with_client() -> tuple[T, ApiStats]:
        async with step.open_client() as client:
            return await work(client), client.stats

    try:
        return asyncio.run(with_client())
    except (RunStopped, SettingsError) as exc:
        raise dg.Failure(description=str(exc), allow_retries=False) from None


def _batch_id(context: dg.AssetExecutionContext, app_db: AppDatabase) -> str:
    batch_id: str = context.partition_key
    try:
        get_batch(app_db.engine(), batch_id, with_tasks=False)
    except UnknownBatch as exc:
        raise dg.Failure(
            description=f"{exc} in the application database", allow_retries=False
        ) from None
    return batch_id


@dg.asset(partitions_def=batches, group_name=GROUP, kinds={"sql"})
def pending_tasks(context: dg.AssetExecutionContext, app_db: AppDatabase) -> dg.MaterializeResult:
    """The batch's tasks, checked again before anything is sent. A settled batch's retryable
    failures start a new reservation here (a re-run or backfill retries them)."""
    batch_id = _batch_id(context, app_db)
    prep = prepare_batch(app_db.engine(), batch_id)
    if prep.retried or prep.short_of_credits:
        context.log.info(
            f"retrying {prep.retried} failed task(s) for {prep.retry_credits} credits; "
            f"{prep.short_of_credits} not retried for lack of credits"
        )
    view = get_batch(app_db.engine(), batch_id)
    return dg.MaterializeResult(
        metadata={
            **batch_metadata(view),
            "invalid_found": prep.invalid,
            "retries_started": prep.retried,
            "retries_short_of_credits": prep.short_of_credits,
        }
    )


@dg.asset(
    partitions_def=batches, group_name=GROUP, deps=[pending_tasks], pool=API_POOL, kinds={"api"}
)
def submitted_tasks(
    context: dg.AssetExecutionContext, app_db: AppDatabase, grsai: GrsaiApi
) -> dg.MaterializeResult:
    """Every waiting task submitted to the Grsai API, at most GRSAI_MAX_CONCURRENCY at once."""
    batch_id = _batch_id(context, app_db)
    step = _step_context(context, app_db, grsai)
    report, stats = _call_api(step, lambda client: submit_waiting_tasks(step, client, [batch_id]))
    context.log.info(f"submitted {report.submitted} task(s); outcomes {dict(report.tasks)}")
    view = get_batch(app_db.engine(), batch_id)
    return dg.MaterializeResult(
        metadata={
            **batch_metadata(view),
            **api_metadata(stats),
            "submitted_now": report.submitted,
            "possible_duplicates_now": report.possible_duplicates,
            "paused_by_429": report.rate_limited_pause,
        }
    )


@dg.asset(
    partitions_def=batches,
    group_name=GROUP,
    deps=[submitted_tasks],
    pool=API_POOL,
    kinds={"api"},
    check_specs=[VIDEO_CHECK],
)
def polled_results(
    context: dg.AssetExecutionContext, config: FollowConfig, app_db: AppDatabase, grsai: GrsaiApi
) -> dg.MaterializeResult:
    """Remote tasks followed until final or until the poll budget is spent."""
    batch_id = _batch_id(context, app_db)
    step = _step_context(context, app_db, grsai)
    budget = config.budget_s if config.budget_s is not None else step.settings.poll_budget_s
    report, stats = _call_api(step, lambda client: follow_tasks(step, client, [batch_id], budget))
    view = get_batch(app_db.engine(), batch_id)
    missing = succeeded_without_video(app_db.engine(), batch_id)
    return dg.MaterializeResult(
        metadata={
            **batch_metadata(view),
            **api_metadata(stats),
            "poll_rounds": report.rounds,
            "polls_unanswered": report.unanswered,
            "resubmitted": report.resubmit.submitted,
            "possible_duplicates_now": report.resubmit.possible_duplicates,
            "poll_budget_spent": report.budget_spent,
        },
        check_results=[
            dg.AssetCheckResult(
                check_name=VIDEO_CHECK.name,
                passed=not missing,
                metadata={"tasks_without_video": dg.MetadataValue.json(missing)},
            )
        ],
    )


@dg.asset(
    partitions_def=batches,
    group_name=GROUP,
    deps=[polled_results],
    kinds={"sql"},
    check_specs=[LEDGER_CHECK],
)
def settled_ledger(context: dg.AssetExecutionContext, app_db: AppDatabase) -> dg.MaterializeResult:
    """Credits settled: one charge per succeeded task, one refund per failed reservation.
    While tasks are unfinished it writes nothing and says it is waiting."""
    batch_id = _batch_id(context, app_db)
    settlement = settle_batch(app_db.engine(), batch_id)
    if settlement.unfinished:
        context.log.info(f"waiting: {settlement.unfinished} task(s) not final yet")
    view = get_batch(app_db.engine(), batch_id)
    problems = ledger_problems(app_db.engine(), batch_id)
    return dg.MaterializeResult(
        metadata={
            **batch_metadata(view),
            "settlement": "settled"
            if settlement.settled
            else f"waiting on {settlement.unfinished} task(s)",
            "ledger_entries_written": settlement.entries_written,
        },
        check_results=[
            dg.AssetCheckResult(
                check_name=LEDGER_CHECK.name,
                passed=not problems,
                metadata={"problems": dg.MetadataValue.json(problems)},
            )
        ],
    )


BATCH_ASSETS = [pending_tasks, submitted_tasks, polled_results, settled_ledger]
