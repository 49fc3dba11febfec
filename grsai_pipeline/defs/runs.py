"""What Dagster knows of the runs at work: whether the re-polling run is live.

A started run is live while its engine's heartbeat is fresh (the runner id of a run's engine is
the run id: ``store/runners.py``) or for its first ``START_GRACE_S`` (resources, intake); a run
whose process died without Dagster knowing stops counting within a lease, not hours later. A
queued re-polling run counts too: the schedule waits for it. Who submits and polls a task is
never decided here: that is per task, in the application database (store/polls.py)."""

# No "from __future__ import annotations": Dagster reads these hints at definition time.
import time
from collections.abc import Collection, Mapping

import dagster as dg

BATCH_ID_TAG = "batch_id"
USER_ID_TAG = "user_id"
TRIGGER_TAG = "grsai/trigger"
# Dagster's own tags: a backfill's runs carry the first; the others turn off run retries
# (for a failure a retry cannot mend, even where dagster.yaml enables run_retries).
BACKFILL_TAG = "dagster/backfill"
NO_RETRY_TAGS = {"dagster/retry_on_asset_or_op_failure": "false", "dagster/max_retries": "0"}
REPOLL_TAG = "grsai/repoll"
# A re-polling run started with no batch open, to send the next batch's first tasks at once.
STANDBY_TAG = "grsai/standby"
REPOLL_JOB = "repoll_open_batches"
CREATE_JOB = "create_batch"

# A started run counts as live this long before its engine's first heartbeat (a run's engine
# registers within seconds of its start: resources, then the intake of its batch).
START_GRACE_S = 20.0
WAITING_TO_START = [
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
]
STARTED = [dg.DagsterRunStatus.STARTED, dg.DagsterRunStatus.CANCELING]
IN_PROGRESS = [*WAITING_TO_START, *STARTED]


def batch_run_tags(batch_id: str, trigger: str, user_id: str | None = None) -> dict[str, str]:
    """Tags of a run of one batch: the batch and its user for filtering in the UI, and what
    started it."""
    tags = {BATCH_ID_TAG: batch_id, TRIGGER_TAG: trigger}
    return tags | ({USER_ID_TAG: user_id} if user_id is not None else {})


def missing_batch_tags(tags: Mapping[str, str], batch_id: str, user_id: str) -> dict[str, str]:
    """The tags a run of the batch lacks: a run launched from the UI (Materialize, a backfill)
    carries only Dagster's own, so its step adds these when it starts."""
    wanted = batch_run_tags(batch_id, "backfill" if BACKFILL_TAG in tags else "ui", user_id)
    if TRIGGER_TAG in tags:
        del wanted[TRIGGER_TAG]
    return {key: value for key, value in wanted.items() if tags.get(key) != value}


def _live_runs(
    instance: dg.DagsterInstance, job_name: str, live_runners: Collection[str]
) -> list[dg.RunRecord]:
    records = instance.get_run_records(
        filters=dg.RunsFilter(job_name=job_name, statuses=IN_PROGRESS)
    )
    now = time.time()
    return [r for r in records if _is_live(r, live_runners, now)]


def _is_live(record: dg.RunRecord, live_runners: Collection[str], now: float) -> bool:
    run = record.dagster_run
    if run.status in WAITING_TO_START or run.run_id in live_runners:
        return True
    started = record.start_time or record.create_timestamp.timestamp()
    return now - started < START_GRACE_S


def repoll_runs_wanted(
    instance: dg.DagsterInstance, runs: int, after_s: float, live_runners: Collection[str]
) -> int:
    """How many re-polling runs to ask for now, to keep ``runs`` at work (GRSAI_REPOLL_RUNS):
    the missing ones (none yet, or one died); else one more when the oldest has worked
    ``after_s``, its successor (the oldest then ends, once ``runs`` newer ones are up); none
    while a handover is under way."""
    live = _live_runs(instance, REPOLL_JOB, live_runners)
    if len(live) < runs:
        return runs - len(live)
    if len(live) > runs:
        return 0  # a handover is under way
    starts = [r.start_time for r in live]
    oldest = min((s for s in starts if s is not None), default=None)
    return int(None not in starts and oldest is not None and time.time() - oldest >= after_s)


def standby_wanted(
    instance: dg.DagsterInstance, live_runners: Collection[str], budget_s: float, lead_s: float
) -> bool:
    """Whether to start a stand-by re-polling run now: no re-polling run is live, or only
    stand-by ones are and the newest ends its ``budget_s`` within ``lead_s`` (a start's time:
    no gap between them). While a run of the schedule works, the schedule keeps them."""
    live = _live_runs(instance, REPOLL_JOB, live_runners)
    if any(STANDBY_TAG not in r.dagster_run.tags for r in live):
        return False
    starts = [r.start_time for r in live]
    if not starts:
        return True
    if None in starts:
        return False  # one is starting
    return time.time() >= max(s for s in starts if s is not None) + budget_s - lead_s
