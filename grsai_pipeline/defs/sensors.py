"""``new_batches_sensor``: a partition and exactly one run for every batch Dagster has not seen.

The cursor is a high-water mark of ``batch_jobs.created_at``. Each tick re-reads a short window
before it (a writer's clock may lag, or its transaction commit late), page by page, and skips
batches whose partition exists, so none is missed and none is requested twice; ``run_key``
guards the rest. A tick takes at most ``MAX_NEW_PER_TICK`` new batches; the next takes the rest.
Every new batch gets its one run, whatever state it is in (another engine may have settled it
already: its run then only reports it); a run the sensor started never retries failures, which
is an operator's decision (``defs/assets.py``). With no ``GRSAI_API_KEY`` the sensor skips and
says why, and takes the batches once the key is set.

A batch made by the ``create_batch`` job already has its partition (the job adds it, so the
batch shows at once); the sensor finds it by the job's run tags and requests its first run too.
"""

# No "from __future__ import annotations": Dagster reads these hints at definition time.
from datetime import datetime, timedelta

import dagster as dg

from grsai_pipeline.defs.jobs import batch_pipeline
from grsai_pipeline.defs.partitions import BATCHES, batches
from grsai_pipeline.defs.resources import AppDatabase, GrsaiApi
from grsai_pipeline.defs.runs import BATCH_ID_TAG, BATCH_JOB, CREATE_JOB, batch_run_tags
from grsai_pipeline.store.batches import BatchHeader, batches_created_since

LOOKBACK = timedelta(minutes=10)
MAX_NEW_PER_TICK = 1000
PAGE = 1000


@dg.sensor(
    job=batch_pipeline,
    default_status=dg.DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=10,
    description="Adds a partition and requests one run for each new batch.",
)
def new_batches_sensor(
    context: dg.SensorEvaluationContext, app_db: AppDatabase, grsai: GrsaiApi
) -> dg.SensorResult | dg.SkipReason:
    try:
        key = grsai.settings().api_key
    except dg.Failure as exc:
        return dg.SkipReason(f"cannot start runs: {exc.description}")
    if key is None or not key.get_secret_value().strip():
        # The cursor stays: the batches are taken once the key is set.
        return dg.SkipReason(
            "new batches wait: GRSAI_API_KEY is not set, so their runs could not call the API."
            " Set GRSAI_API_KEY (and GRSAI_BASE_URL for a simulator: `make dev` starts one when"
            " the key is unset) and restart the code location."
        )
    high_water = datetime.fromisoformat(context.cursor) if context.cursor else None
    since = high_water - LOOKBACK if high_water else None
    known = set(context.instance.get_dynamic_partitions(BATCHES))
    made_in_ui = _created_without_a_run(context.instance, since)
    new: list[BatchHeader] = []
    from_ui: list[BatchHeader] = []
    last: BatchHeader | None = None
    while len(new) < MAX_NEW_PER_TICK:
        page = batches_created_since(app_db.engine(), since, PAGE, after=last)
        if not page:
            break
        last = page[-1]
        new += [b for b in page if b.id not in known]
        from_ui += [b for b in page if b.id in made_in_ui and b.id in known]
    if len(new) > MAX_NEW_PER_TICK:
        # Stop at the last batch taken, so the next tick's window still holds the rest.
        new, last = new[:MAX_NEW_PER_TICK], new[MAX_NEW_PER_TICK - 1]
    if last is not None:
        high_water = max(high_water or last.created_at, last.created_at)
    cursor = high_water.isoformat() if high_water else None
    if not new and not from_ui:
        return dg.SensorResult(cursor=cursor, skip_reason="no new batch")
    runs = [
        dg.RunRequest(
            partition_key=b.id,
            run_key=f"new-batch:{b.id}",
            tags=batch_run_tags(b.id, "sensor", b.user_id),
        )
        for b in [*new, *from_ui]
    ]
    context.log.info(
        f"{len(new) + len(from_ui)} new batch(es) ({len(from_ui)} from create_batch); "
        f"{len(runs)} run(s) requested"
    )
    return dg.SensorResult(
        run_requests=runs,
        dynamic_partitions_requests=[batches.build_add_request([b.id for b in new])] if new else [],
        cursor=cursor,
    )


def _created_without_a_run(instance: dg.DagsterInstance, since: datetime | None) -> set[str]:
    """Batches that ``create_batch`` runs made since ``since`` and that no run of
    ``batch_pipeline`` has taken yet (a few: people launch them one by one)."""
    records = instance.get_run_records(
        filters=dg.RunsFilter(job_name=CREATE_JOB, updated_after=since), limit=MAX_NEW_PER_TICK
    )
    made = {r.dagster_run.tags[BATCH_ID_TAG] for r in records if BATCH_ID_TAG in r.dagster_run.tags}
    return {
        batch_id
        for batch_id in made
        if not instance.get_run_ids(
            dg.RunsFilter(job_name=BATCH_JOB, tags={BATCH_ID_TAG: batch_id}), limit=1
        )
    }
