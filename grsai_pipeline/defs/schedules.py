"""``repoll_processing_schedule``: every minute, a run for each batch that still has work.

It asks only for batches whose partition exists and that no run is working on right now, so
two runs of one batch are never requested at once; the queued run coordinator's per-batch tag
limit (``dagster.yaml``) keeps them apart at launch, and the database claims make any overlap
that still happens safe. A run that died without telling Dagster stops counting as "working"
after ``BUSY_HORIZON`` (production also fails such runs through run monitoring).
"""

# No "from __future__ import annotations": Dagster reads these hints at definition time.
import time
from datetime import timedelta

import dagster as dg

from grsai_pipeline.defs.jobs import BATCH_ID_TAG, batch_pipeline, batch_run_tags
from grsai_pipeline.defs.partitions import BATCHES
from grsai_pipeline.defs.resources import AppDatabase
from grsai_pipeline.store.batches import unsettled_batch_ids

BUSY_HORIZON = timedelta(hours=2)
IN_PROGRESS = [
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
    dg.DagsterRunStatus.CANCELING,
]


def batches_with_live_runs(instance: dg.DagsterInstance) -> set[str]:
    """Partitions of ``batch_pipeline`` runs in progress that started within the horizon."""
    records = instance.get_run_records(
        filters=dg.RunsFilter(job_name=batch_pipeline.name, statuses=IN_PROGRESS)
    )
    oldest = time.time() - BUSY_HORIZON.total_seconds()
    busy = set()
    for record in records:
        started = record.start_time or record.create_timestamp.timestamp()
        key = record.dagster_run.tags.get("dagster/partition") or record.dagster_run.tags.get(
            BATCH_ID_TAG
        )
        if key and started >= oldest:
            busy.add(key)
    return busy


@dg.schedule(
    job=batch_pipeline,
    cron_schedule="* * * * *",
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="Re-polls every batch that still has unfinished tasks.",
)
def repoll_processing_schedule(
    context: dg.ScheduleEvaluationContext, app_db: AppDatabase
) -> list[dg.RunRequest] | dg.SkipReason:
    unsettled = unsettled_batch_ids(app_db.engine())
    if not unsettled:
        return dg.SkipReason("no batch has unfinished tasks")
    known = set(context.instance.get_dynamic_partitions(BATCHES))
    busy = batches_with_live_runs(context.instance)
    tick = context.scheduled_execution_time.isoformat() if context.scheduled_execution_time else ""
    requests = [
        dg.RunRequest(
            partition_key=batch_id,
            run_key=f"repoll:{batch_id}:{tick}",
            tags=batch_run_tags(batch_id, "schedule"),
        )
        for batch_id in unsettled
        if batch_id in known and batch_id not in busy
    ]
    if not requests:
        return dg.SkipReason(f"{len(unsettled)} unsettled batch(es), each already being worked on")
    return requests
