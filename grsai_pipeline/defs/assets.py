"""The four partitioned assets of a batch: pending_tasks -> submitted_tasks -> polled_results
-> settled_ledger. State lives in the application database, so each asset always materializes
with metadata (never a value through an IO manager), and each calls one function of the core.
"""

# No "from __future__ import annotations": Dagster reads these hints at definition time.
from collections.abc import Callable
from typing import Any, TypeVar

import dagster as dg

from grsai_pipeline.config import SettingsError
from grsai_pipeline.defs.metadata import batch_metadata, engine_metadata
from grsai_pipeline.defs.partitions import batches
from grsai_pipeline.defs.resources import AppDatabase, GrsaiApi
from grsai_pipeline.engine.work import follow_batch, submit_batch
from grsai_pipeline.grsai.errors import RunStopped
from grsai_pipeline.store.audit import ledger_problems, succeeded_without_video
from grsai_pipeline.store.batches import get_batch
from grsai_pipeline.store.errors import UnknownBatch
from grsai_pipeline.store.retries import retry_failed_tasks
from grsai_pipeline.store.settlement import settle_batch

GROUP = "batch_pipeline"
API_POOL = "grsai_api"
T = TypeVar("T")

LEDGER_CHECK = dg.AssetCheckSpec("ledger_balances", asset="settled_ledger")
VIDEO_CHECK = dg.AssetCheckSpec("succeeded_tasks_have_video_url", asset="polled_results")


class FollowConfig(dg.Config):
    """``budget_s`` caps in-run polling; unset means ``GRSAI_POLL_BUDGET_S``."""

    budget_s: float | None = None


def _stopping_the_run(work: Callable[[], T]) -> T:
    """Run API work; a stopped run (bad key, no upstream credits, no key) fails, no retries."""
    try:
        return work()
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


def _view_metadata(app_db: AppDatabase, batch_id: str) -> dict[str, Any]:
    return batch_metadata(get_batch(app_db.engine(), batch_id, task_limit=20))


@dg.asset(partitions_def=batches, group_name=GROUP, kinds={"sql"})
def pending_tasks(context: dg.AssetExecutionContext, app_db: AppDatabase) -> dg.MaterializeResult:
    """The batch's tasks waiting for the API. On a re-run or backfill of a settled batch, its
    retryable failures are reserved again (a new reservation each) and wait with them."""
    batch_id = _batch_id(context, app_db)
    retry = retry_failed_tasks(app_db.engine(), batch_id)
    if retry.retried or retry.short_of_credits:
        context.log.info(
            f"retrying {retry.retried} failed task(s) for {retry.retry_credits} credits; "
            f"{retry.short_of_credits} not retried for lack of credits"
        )
    return dg.MaterializeResult(
        metadata={
            **_view_metadata(app_db, batch_id),
            "retries_started": retry.retried,
            "retries_short_of_credits": retry.short_of_credits,
        }
    )


@dg.asset(
    partitions_def=batches, group_name=GROUP, deps=[pending_tasks], pool=API_POOL, kinds={"api"}
)
def submitted_tasks(
    context: dg.AssetExecutionContext, app_db: AppDatabase, grsai: GrsaiApi
) -> dg.MaterializeResult:
    """Every waiting task submitted to the Grsai API, at most GRSAI_MAX_CONCURRENCY requests at
    once (polling the first answers meanwhile)."""
    batch_id = _batch_id(context, app_db)
    settings = grsai.settings()
    report = _stopping_the_run(
        lambda: submit_batch(app_db.engine(), settings, context.run.run_id, batch_id)
    )
    context.log.info(f"submitted {report.accepted} task(s); {dict(report.outcomes())}")
    return dg.MaterializeResult(
        metadata={**_view_metadata(app_db, batch_id), **engine_metadata(report)}
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
    settings = grsai.settings()
    budget = config.budget_s if config.budget_s is not None else settings.poll_budget_s
    report = _stopping_the_run(
        lambda: follow_batch(app_db.engine(), settings, context.run.run_id, batch_id, budget)
    )
    missing = succeeded_without_video(app_db.engine(), batch_id)
    return dg.MaterializeResult(
        metadata={
            **_view_metadata(app_db, batch_id),
            **engine_metadata(report),
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
    problems = ledger_problems(app_db.engine(), batch_id)
    return dg.MaterializeResult(
        metadata={
            **_view_metadata(app_db, batch_id),
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
