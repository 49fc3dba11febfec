"""``repoll_processing_schedule``: every minute, the runs that follow the open batches.

A run (``repoll_open_batches``) covers every batch with unfinished work, however many there
are, beside whatever runs of their own those batches have (tasks are shared per task in the
database, store/polls.py). The schedule keeps ``GRSAI_REPOLL_RUNS`` of them (default 1) at
work while there is such a batch: it asks for the missing ones (none yet, or one died), and
when the oldest has worked for ``HANDOVER_AFTER_S``, for its successor: the next run starts
while the old one still polls, and the old one ends as soon as enough newer engines are up,
so that no task waits for a run to start. Production's queued run coordinator allows one run
more than GRSAI_REPOLL_RUNS for that handover (the ``grsai/repoll`` tag limit in
``dagster.yaml``: 2 for the default). One run is relieved at a time, so each run's budget grows
by HANDOVER_AFTER_S per run beyond the first (``budget_for``): runs started together are all
relieved before any of them ends by its budget.
"""

# No "from __future__ import annotations": Dagster reads these hints at definition time.
import dagster as dg
from sqlalchemy.exc import SQLAlchemyError

from grsai_pipeline.defs.repolling import (
    HANDOVER_AFTER_S,
    budget_config,
    budget_for,
    repoll_open_batches,
)
from grsai_pipeline.defs.resources import AppDatabase, GrsaiApi
from grsai_pipeline.defs.runs import REPOLL_TAG, TRIGGER_TAG, repoll_runs_wanted
from grsai_pipeline.errors import GrsaiPipelineError
from grsai_pipeline.store import outages
from grsai_pipeline.store.batches import open_batch_ids
from grsai_pipeline.store.db import reading
from grsai_pipeline.store.outages import is_outage
from grsai_pipeline.store.runners import live_runner_ids


@dg.schedule(
    job=repoll_open_batches,
    cron_schedule="* * * * *",
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description=(
        "Re-polls every batch that still has unfinished tasks, in GRSAI_REPOLL_RUNS runs at once"
        " (default 1)."
    ),
)
def repoll_processing_schedule(
    context: dg.ScheduleEvaluationContext, app_db: AppDatabase, grsai: GrsaiApi
) -> list[dg.RunRequest] | dg.SkipReason:
    try:
        settings = grsai.settings()
        with reading(app_db.engine()) as conn:
            open_ids = open_batch_ids(conn)
            # Half a lease: a runner that could not beat for that long stops sending by itself
            # (store/runners.Heartbeat.fresh), so a killed run is replaced a tick sooner.
            live = live_runner_ids(conn, settings.claim_lease_s / 2)
    except (dg.Failure, GrsaiPipelineError, SQLAlchemyError) as exc:
        if isinstance(exc, SQLAlchemyError) and not is_outage(exc):
            raise
        # Said in the tick, once a minute, instead of a run that fails every minute; a
        # failover of the application database is ridden out the same way (the next tick).
        return _skip(context, f"cannot re-poll: {_reason(exc)}")
    if not open_ids:
        return _skip(context, "no batch has unfinished tasks")
    if not settings.has_api_key:
        return _skip(
            context,
            f"{len(open_ids)} open batch(es) wait: GRSAI_API_KEY is not set, so a re-polling "
            "run could not call the API. Set GRSAI_API_KEY (and GRSAI_BASE_URL for a "
            "simulator: `make dev` starts one when the key is unset) and restart the code "
            "location.",
        )
    wanted = repoll_runs_wanted(context.instance, settings.repoll_runs, HANDOVER_AFTER_S, live)
    if not wanted:
        return _skip(context, f"the re-polling run(s) still at work ({len(open_ids)} batch(es))")
    tick = context.scheduled_execution_time.isoformat() if context.scheduled_execution_time else ""
    tags = {REPOLL_TAG: "all", TRIGGER_TAG: "schedule"}
    # The first keeps the key of one run a tick, as before GRSAI_REPOLL_RUNS.
    keys = [f"repoll:{tick}", *(f"repoll:{tick}:{k}" for k in range(1, wanted))]
    config = budget_config(budget_for(settings.repoll_runs))
    return [dg.RunRequest(run_key=key, tags=tags, run_config=config) for key in keys]


def _skip(context: dg.ScheduleEvaluationContext, reason: str) -> dg.SkipReason:
    context.log.info(reason)  # shown under the tick's "View logs", not only on hover
    return dg.SkipReason(reason)


def _reason(error: Exception) -> str:
    if isinstance(error, dg.Failure):
        return error.description or str(error)
    if isinstance(error, SQLAlchemyError):
        return outages.unreachable(error)
    return str(error)
