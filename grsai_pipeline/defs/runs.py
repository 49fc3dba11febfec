"""What Dagster knows of the runs at work: which batches have a live run of their own, and
whether the re-polling run is live."""

# No "from __future__ import annotations": Dagster reads these hints at definition time.
import time
from datetime import timedelta

import dagster as dg

BATCH_ID_TAG = "batch_id"
TRIGGER_TAG = "grsai/trigger"
REPOLL_TAG = "grsai/repoll"
BATCH_JOB = "batch_pipeline"
REPOLL_JOB = "repoll_open_batches"

# A run that died without telling Dagster stops counting as live after this (production also
# fails such runs through run monitoring).
BUSY_HORIZON = timedelta(hours=2)
IN_PROGRESS = [
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
    dg.DagsterRunStatus.CANCELING,
]


def batch_run_tags(batch_id: str, trigger: str) -> dict[str, str]:
    """Tags of a run of one batch: the batch for filtering in the UI, and what started it."""
    return {BATCH_ID_TAG: batch_id, TRIGGER_TAG: trigger}


def _live_runs(instance: dg.DagsterInstance, job_name: str) -> list[dg.RunRecord]:
    records = instance.get_run_records(
        filters=dg.RunsFilter(job_name=job_name, statuses=IN_PROGRESS)
    )
    oldest = time.time() - BUSY_HORIZON.total_seconds()
    return [r for r in records if (r.start_time or r.create_timestamp.timestamp()) >= oldest]


def batches_with_live_runs(instance: dg.DagsterInstance) -> set[str]:
    """Batches with a run of ``batch_pipeline`` queued, starting or running."""
    busy = set()
    for record in _live_runs(instance, BATCH_JOB):
        tags = record.dagster_run.tags
        key = tags.get("dagster/partition") or tags.get(BATCH_ID_TAG)
        if key:
            busy.add(key)
    return busy


def repoll_run_is_live(instance: dg.DagsterInstance) -> bool:
    return bool(_live_runs(instance, REPOLL_JOB))
