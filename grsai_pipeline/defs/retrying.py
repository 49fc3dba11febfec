"""``retry_failed_batches``: one launch from the UI retries every batch with retryable failures.

The design's "backfills reprocess failed partitions" has no way in through Dagster's partition
status: a batch whose tasks failed still settles (refunds are money moved, the run succeeds),
so its partition is green and the "Failed" preset of a backfill selects nothing. This job is
the one launch instead (Jobs, ``retry_failed_batches``, Launch run): it finds every settled,
uncancelled batch holding a failure a retry by backfill would take (a generation error, an
exhausted submit, a time-out, retried fewer than ``GRSAI_MAX_BACKFILL_RETRIES`` times), and
retries each as a run of its partition would (``store/retries.retry_failed_tasks``: a new
reservation per task, all or nothing per batch). The re-polling run then sends them, like any
task waiting anywhere (at once when one is up, else at the schedule's next minute). Tasks out
of retries are marked final and say so. A backfill of a partition still retries that batch.
"""

# No "from __future__ import annotations": Dagster reads these hints at definition time.
from collections.abc import Iterator

import dagster as dg

from grsai_pipeline.defs.assets import PENDING
from grsai_pipeline.defs.metadata import PREVIEW_ROWS, batch_metadata
from grsai_pipeline.defs.reports import snapshot
from grsai_pipeline.defs.resources import AppDatabase, GrsaiApi
from grsai_pipeline.defs.runs import TRIGGER_TAG
from grsai_pipeline.store.retries import batches_to_retry, retry_failed_tasks

RETRY_JOB = "retry_failed_batches"


@dg.op(out=dg.Out(dg.Nothing))
def retry_failed_batches_op(
    context: dg.OpExecutionContext, app_db: AppDatabase, grsai: GrsaiApi
) -> Iterator[dg.AssetMaterialization | dg.Output[None]]:
    """Retry every batch with retryable failures; report each as its ``pending_tasks``."""
    db, policy = app_db.engine(), grsai.settings().retry_policy
    retried = short = final = credits = 0
    batches = batches_to_retry(db)
    for batch_id in batches:
        started = retry_failed_tasks(db, batch_id, policy)
        retried, short = retried + started.retried, short + started.short_of_credits
        final, credits = final + started.final, credits + started.retry_credits
        context.log.info(
            f"batch {batch_id}: {started.retried} task(s) retried for {started.retry_credits} "
            f"credits, {started.short_of_credits} short of credits, {started.final} final"
        )
        snap = snapshot(db, batch_id, PREVIEW_ROWS, policy)
        yield dg.AssetMaterialization(
            asset_key=PENDING.key,
            partition=batch_id,
            metadata={
                **batch_metadata(snap.view, snap.outcomes),
                "retries_started": started.retried,
                "retries_short_of_credits": started.short_of_credits,
                "retries_used_up": started.final,
                "retried_by_run": context.run_id,
            },
        )
    context.log.info(
        f"{len(batches)} batch(es) with retryable failures: {retried} task(s) retried for "
        f"{credits} credits, {short} short of credits, {final} out of retries (final; "
        f"GRSAI_MAX_BACKFILL_RETRIES={policy.max_backfill_retries})"
    )
    yield dg.Output(
        None,
        metadata={
            "batches": len(batches),
            "tasks_retried": retried,
            "credits_reserved": credits,
            "short_of_credits": short,
            "out_of_retries": final,
        },
    )


@dg.job(
    name=RETRY_JOB,
    executor_def=dg.in_process_executor,
    tags={TRIGGER_TAG: "ui"},
    description="Retries every settled batch's retryable failures (generation errors, "
    "exhausted submits, time-outs), each task at most GRSAI_MAX_BACKFILL_RETRIES times; the "
    "re-polling run sends them.",
)
def retry_failed_batches() -> None:
    retry_failed_batches_op()
