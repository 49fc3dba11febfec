"""The partitioned assets of a batch: pending_tasks -> submitted_tasks -> polled_results
-> settled_ledger, and archived_videos after polled_results, materialized by one step.

One step, not four: submits and polls share one engine (the first answers are polled while
later tasks are still being submitted), and a Dagster step costs a second of events and
bookkeeping on these machines (issue 9's profile of `grsai-pipeline run`). Each asset still
materializes on its own, as soon as its part is done, with metadata a person reads at a
glance; state lives in the application database, never in an IO manager.
"""

# No "from __future__ import annotations": Dagster reads these hints at definition time.
import math
from collections.abc import Iterator
from typing import Any

import dagster as dg
from sqlalchemy.engine import Engine

from grsai_pipeline.config import Settings
from grsai_pipeline.defs.checks import LEDGER_CHECK, TASKS_CHECK, VIDEO_CHECK
from grsai_pipeline.defs.metadata import PREVIEW_ROWS, batch_metadata, engine_metadata
from grsai_pipeline.defs.partitions import batches, partitioned_check
from grsai_pipeline.defs.reports import (
    ARCHIVE_CHECK_NAME,
    ARCHIVED_KEY,
    archived_report,
    polled_report,
    settled_report,
    snapshot,
)
from grsai_pipeline.defs.resources import AppDatabase, GrsaiApi
from grsai_pipeline.defs.runs import NO_RETRY_TAGS, TRIGGER_TAG, missing_batch_tags
from grsai_pipeline.domain.states import BatchStatus, RetryPolicy
from grsai_pipeline.engine.loop import Until
from grsai_pipeline.engine.work import batch_worker
from grsai_pipeline.errors import RunStopped, SettingsError, UnknownBatch
from grsai_pipeline.store.archives import archive_state
from grsai_pipeline.store.audit import ledger_problems, succeeded_without_video
from grsai_pipeline.store.batches import get_batch
from grsai_pipeline.store.db import reading
from grsai_pipeline.store.intake import take_in_batch
from grsai_pipeline.store.outages import ride_out
from grsai_pipeline.store.outcomes import batch_outcomes
from grsai_pipeline.store.retries import RetryStart, retry_failed_tasks
from grsai_pipeline.store.runners import open_batch_runners
from grsai_pipeline.videos.archiver import archive_videos

GROUP = "batch_pipeline"
API_POOL = "grsai_api"
BATCH_STEP = "batch_lifecycle"

PENDING = dg.AssetSpec(
    "pending_tasks",
    group_name=GROUP,
    kinds={"sql"},
    description="The batch's tasks waiting for the API (a batch a web app wrote as rows is "
    "priced and reserved first). On a run an operator launches, or a backfill, of a settled "
    "batch, its retryable failures are reserved again (a new reservation each) and wait too.",
)
SUBMITTED = dg.AssetSpec(
    "submitted_tasks",
    deps=[PENDING],
    group_name=GROUP,
    kinds={"api"},
    description="Every waiting task submitted to the Grsai API, at most GRSAI_MAX_CONCURRENCY "
    "requests at once (the first answers are polled meanwhile).",
)
POLLED = dg.AssetSpec(
    "polled_results",
    deps=[SUBMITTED],
    group_name=GROUP,
    kinds={"api"},
    description="Remote tasks followed until final or until the poll budget is spent "
    "(GRSAI_POLL_BUDGET_S); failed generations are resubmitted while attempts remain.",
)
SETTLED = dg.AssetSpec(
    "settled_ledger",
    deps=[POLLED],
    group_name=GROUP,
    kinds={"sql"},
    description="Credits settled: one charge per succeeded task, one refund per failed "
    "reservation. While tasks are unfinished it writes nothing and says it is waiting.",
)
ARCHIVED = dg.AssetSpec(
    ARCHIVED_KEY,
    deps=[POLLED],
    group_name=GROUP,
    kinds={"s3"},
    description="Every succeeded video copied from its expiring URL to GRSAI_ARCHIVE_URL "
    "(a local folder by default; s3://bucket/prefix in production), streamed and whole.",
)
ARCHIVE_CHECK = partitioned_check(
    ARCHIVE_CHECK_NAME,
    ARCHIVED.key,
    "Fails when a succeeded video's URL expired before it was archived: the user "
    "paid for a video we no longer have (each lost task is named).",
)


# Past its budget a batch's run leaves its batch to the re-polling run; when none is up (a cold
# start) it follows on for this long: the schedule's next tick (a minute at most) and a start.
COLD_FOLLOW_S = 75.0


class FollowConfig(dg.Config):
    """``budget_s`` caps in-run polling; unset means ``GRSAI_POLL_BUDGET_S`` (for the sensor's
    run of a new batch, at least ``COLD_FOLLOW_S`` while no re-polling run is up)."""

    budget_s: float | None = None


def _open_batch(context: dg.AssetExecutionContext, app_db: AppDatabase) -> str:
    """The partition's batch, with its id and user added to the run's tags when missing; an
    unknown batch fails the run once, for good (no retry, not even with run retries on)."""
    batch_id: str = context.partition_key
    try:
        view = get_batch(app_db.engine(), batch_id, with_tasks=False)
    except UnknownBatch:
        context.instance.add_run_tags(context.run.run_id, NO_RETRY_TAGS)
        raise dg.Failure(
            description=f"no batch {batch_id!r} in the application database: partitions of "
            "'batches' are batch ids, added by new_batches_sensor and the create_batch job "
            "(a partition added by hand names no batch; running it again fails again)",
            allow_retries=False,
        ) from None
    missing = missing_batch_tags(context.run.tags, batch_id, view.user_id)
    if missing:
        context.instance.add_run_tags(context.run.run_id, missing)
    return batch_id


def _relieved(db: Engine, settings: Settings) -> bool:
    """Whether a re-polling run is up to follow the batch once this run's budget is spent."""
    with reading(db) as conn:
        return open_batch_runners(conn, settings.claim_lease_s) > 0


def _view_metadata(app_db: AppDatabase, batch_id: str, policy: RetryPolicy) -> dict[str, Any]:
    snap = snapshot(app_db.engine(), batch_id, PREVIEW_ROWS, policy)
    return batch_metadata(snap.view, snap.outcomes)


@dg.multi_asset(
    name=BATCH_STEP,
    specs=[PENDING, SUBMITTED, POLLED, SETTLED, ARCHIVED],
    check_specs=[VIDEO_CHECK, LEDGER_CHECK, TASKS_CHECK, ARCHIVE_CHECK],
    partitions_def=batches,
    pool=API_POOL,
)
def batch_lifecycle(
    context: dg.AssetExecutionContext, config: FollowConfig, app_db: AppDatabase, grsai: GrsaiApi
) -> Iterator[dg.MaterializeResult]:
    """One batch from its waiting tasks to its settled credits."""
    batch_id = _open_batch(context, app_db)
    db = app_db.engine()
    # A batch a web app wrote as rows is priced and reserved (or refused) before anything else.
    intake = take_in_batch(db, batch_id, grsai.settings().price_table)
    if intake.priced or intake.invalid:
        context.log.info(
            intake.refused
            or f"took in {intake.priced} task(s) written as rows for {intake.reserved_credits}"
            f" credits; {intake.invalid} invalid"
        )
    # Retrying failures is an operator's decision (a launch from the UI, a backfill); the run the
    # sensor starts for a new batch never retries, even if another engine settled it already.
    sensor_run = context.run.tags.get(TRIGGER_TAG) == "sensor"
    policy = grsai.settings().retry_policy
    retry = RetryStart() if sensor_run else retry_failed_tasks(db, batch_id, policy)
    if retry.retried or retry.short_of_credits or retry.final:
        context.log.info(
            f"retrying {retry.retried} failed task(s) for {retry.retry_credits} credits; "
            f"{retry.short_of_credits} not retried for lack of credits; {retry.final} final "
            f"(retried {policy.max_backfill_retries} time(s) already, GRSAI_MAX_BACKFILL_RETRIES)"
        )
    yield dg.MaterializeResult(
        asset_key=PENDING.key,
        metadata={
            **_view_metadata(app_db, batch_id, policy),
            "tasks_taken_in": intake.priced,
            "retries_started": retry.retried,
            "retries_short_of_credits": retry.short_of_credits,
            "retries_used_up": retry.final,
        },
    )

    try:
        settings = grsai.settings()
        budget = config.budget_s if config.budget_s is not None else settings.poll_budget_s
        with batch_worker(db, settings, context.run.run_id, batch_id) as worker:
            submitted = worker.run(Until.SUBMITTED, math.inf)
            context.log.info(
                f"submitted {submitted.accepted} task(s); {dict(submitted.outcomes())}"
            )
            yield dg.MaterializeResult(
                asset_key=SUBMITTED.key,
                metadata={
                    **_view_metadata(app_db, batch_id, policy),
                    **engine_metadata(submitted),
                },
            )
            if sensor_run and config.budget_s is None and not _relieved(db, settings):
                # No re-polling run is up to take the new batch over past the budget (a cold
                # start: the schedule ticks each minute): follow it until one can be.
                budget = max(budget, COLD_FOLLOW_S)
            followed = worker.run(Until.FINAL, budget)
    except (RunStopped, SettingsError) as exc:
        # A bad key, no upstream credits, no key: the run stops, no task fails, no retries.
        context.instance.add_run_tags(context.run.run_id, NO_RETRY_TAGS)
        raise dg.Failure(description=str(exc), allow_retries=False) from None
    # A failover of the application database now is ridden out too (store/outages.py).
    missing = ride_out("batch run", lambda: succeeded_without_video(db, batch_id))
    followed_metadata = {**engine_metadata(followed), "poll_budget_spent": followed.budget_spent}
    snap = ride_out("batch run", lambda: snapshot(db, batch_id, PREVIEW_ROWS, policy))
    yield polled_report(snap, followed_metadata, missing).result()

    # The engine settled the batch at the read that found its tasks all final (or another
    # engine did, or it waits on tasks still at the API): this step reports what is written.
    entries = sum(s.entries_written for s in [*submitted.settled, *followed.settled])
    problems = ride_out("batch run", lambda: ledger_problems(db, batch_id))
    snap = ride_out("batch run", lambda: snapshot(db, batch_id, PREVIEW_ROWS, policy))
    said = "settled"
    if snap.view.status != BatchStatus.SETTLED:
        said = f"waiting on {snap.view.unfinished} task(s)"
        context.log.info(f"waiting: {snap.view.unfinished} task(s) not final yet")
    written = {"ledger_entries_written": entries}
    yield settled_report(snap, written, said, problems).result()

    # After the money: a slow download never holds up a settlement.
    archived = archive_videos(
        db, settings, batch_ids=[batch_id], budget_s=settings.archive_budget_s
    )
    state = archive_state(db, [batch_id])[batch_id]
    with reading(db) as conn:
        copies = batch_outcomes(conn, [batch_id], policy=policy)[batch_id]
    yield archived_report(batch_id, state, copies, {}, archived).result()


BATCH_ASSETS = [batch_lifecycle]
