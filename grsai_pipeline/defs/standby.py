"""``repoll_standby_sensor``: a re-polling run stands by whenever none is at work.

Without one, a batch that arrives at an idle instance waits for ``new_batches_sensor``'s tick,
the run queue and seconds of a run's start before its first submit (issue 22's fairness case:
10-14 s on two cores). With one up, its engine reads the new batch within a second and sends it.
So while ``GRSAI_API_KEY`` is set and no re-polling run is queued or live, this sensor asks for
one (``standby_request``: an hour long, lingering with nothing open), and for its successor a
start's time before that hour ends. While batches are open the schedule keeps its own runs
(``defs/schedules.py``); a stand-by run hands over to them like any older re-polling run.
"""

# No "from __future__ import annotations": Dagster reads these hints at definition time.
import time

import dagster as dg
from sqlalchemy.exc import SQLAlchemyError

from grsai_pipeline.defs.repolling import STANDBY_BUDGET_S, standby_request
from grsai_pipeline.defs.resources import AppDatabase, GrsaiApi
from grsai_pipeline.defs.runs import REPOLL_JOB, standby_wanted
from grsai_pipeline.store.db import reading
from grsai_pipeline.store.outages import is_outage, unreachable
from grsai_pipeline.store.runners import live_runner_ids

# The successor is asked this long before a stand-by run's hour ends: a queue and a start.
STANDBY_LEAD_S = 60.0


# The job by name: given the job itself, Dagster rebuilds the sensor to bind its resources and
# warns (BetaWarning, "owners") in every process that loads the definitions.
@dg.sensor(
    job_name=REPOLL_JOB,
    default_status=dg.DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=5,
    description="Keeps one re-polling run standing by while none is at work, so that a new "
    "batch's first tasks are sent within a second.",
)
def repoll_standby_sensor(
    context: dg.SensorEvaluationContext, app_db: AppDatabase, grsai: GrsaiApi
) -> dg.RunRequest | dg.SkipReason:
    # Skips are not logged: a log is a file per tick in Dagster's compute log storage.
    try:
        settings = grsai.settings()
    except dg.Failure as exc:
        return dg.SkipReason(f"no stand-by run: {exc.description}")
    if not settings.has_api_key:
        return dg.SkipReason("no stand-by run: GRSAI_API_KEY is not set")
    try:
        with reading(app_db.engine()) as conn:
            live = live_runner_ids(conn, settings.claim_lease_s / 2)
    except SQLAlchemyError as error:
        if not is_outage(error):
            raise
        return dg.SkipReason(unreachable(error))
    if not standby_wanted(context.instance, live, STANDBY_BUDGET_S, STANDBY_LEAD_S):
        return dg.SkipReason("a re-polling run is at work or stands by")
    context.log.info("no re-polling run at work: one stands by for the next batch")
    # Its own trigger: the sensor's per-batch runs queue one at a time (dagster.yaml), and this
    # one must not wait behind them.
    return standby_request(f"standby:{time.time():.0f}", "standby")
