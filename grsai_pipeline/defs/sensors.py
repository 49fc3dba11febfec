"""``new_batches_sensor``: a partition and exactly one run for every batch Dagster has not seen.

The cursor holds a high-water mark of ``batch_jobs.created_at`` and the batches the sensor
requested a run for within ``LOOKBACK`` of it. Each tick re-reads that window (a writer's clock
may lag, or its transaction commit late), page by page, and requests a run for each batch in it
it has not requested yet, so none is missed and none is requested twice; ``run_key`` guards the
rest. Whether a batch's partition exists says nothing here: the ``create_batch`` job adds one
at once, and a re-polling run adds one when it reports a batch before the sensor's tick (issue
22: it may submit and settle a new batch within seconds). A tick takes at most
``MAX_NEW_PER_TICK`` new batches; the next takes the rest. Every new batch gets its one run,
whatever state it is in (another engine may have settled it already: its run then only reports
it); a run the sensor started never retries failures, which is an operator's decision
(``defs/assets.py``). With no ``GRSAI_API_KEY`` the sensor skips and says why, and takes the
batches once the key is set.

A partition that names no batch (added by hand in the UI: "Add partition") is removed by the
next tick, with a log line (issue 24): its runs can only fail, and it would show every asset
as failed. Each tick checks the partitions added after the last one it checked (the cursor
names it; all of them again when that one is gone).
Every tick that does something, or skips for a reason to act on, says so in its log ("View
logs" on the tick); the idle "no new batch" shows on the tick only.
"""

# No "from __future__ import annotations": Dagster reads these hints at definition time.
import json
from dataclasses import dataclass
from datetime import datetime, timedelta

import dagster as dg
from sqlalchemy.exc import SQLAlchemyError

from grsai_pipeline.defs.jobs import batch_pipeline
from grsai_pipeline.defs.partitions import BATCHES, batches
from grsai_pipeline.defs.resources import AppDatabase, GrsaiApi
from grsai_pipeline.defs.runs import batch_run_tags
from grsai_pipeline.store.batches import BatchHeader, batches_created_since, existing_batch_ids
from grsai_pipeline.store.outages import is_outage, unreachable

LOOKBACK = timedelta(minutes=10)
MAX_NEW_PER_TICK = 1000
PAGE = 1000


@dg.sensor(
    job=batch_pipeline,
    default_status=dg.DefaultSensorStatus.RUNNING,
    # A new batch waits at most this long for its partition and run (its first submits may come
    # sooner, from a live re-polling run); a tick is one indexed read of recent batches.
    minimum_interval_seconds=5,
    description="Adds a partition and requests one run for each new batch.",
)
def new_batches_sensor(
    context: dg.SensorEvaluationContext, app_db: AppDatabase, grsai: GrsaiApi
) -> dg.SensorResult | dg.SkipReason:
    try:
        has_key = grsai.settings().has_api_key
    except dg.Failure as exc:
        return _skip(context, f"cannot start runs: {exc.description}")
    if not has_key:
        # The cursor stays: the batches are taken once the key is set.
        return _skip(
            context,
            "new batches wait: GRSAI_API_KEY is not set, so their runs could not call the API."
            " Set GRSAI_API_KEY (and GRSAI_BASE_URL for a simulator: `make dev` starts one when"
            " the key is unset) and restart the code location.",
        )
    seen = _Cursor.parse(context.cursor)
    partitions = list(context.instance.get_dynamic_partitions(BATCHES))
    try:
        junk = _naming_no_batch(context, app_db, partitions, seen.last_partition)
        since = seen.high_water - LOOKBACK if seen.high_water else None
        new: list[BatchHeader] = []
        last: BatchHeader | None = None
        while len(new) < MAX_NEW_PER_TICK:
            page = batches_created_since(app_db.engine(), since, PAGE, after=last)
            if not page:
                break
            last = page[-1]
            new += [b for b in page if b.id not in seen.requested]
    except SQLAlchemyError as error:
        if not is_outage(error):
            raise
        # A failover: the cursor stays, the next tick takes what this one could not read.
        return _skip(context, unreachable(error))
    if len(new) > MAX_NEW_PER_TICK:
        # Stop at the last batch taken, so the next tick's window still holds the rest.
        new, last = new[:MAX_NEW_PER_TICK], new[MAX_NEW_PER_TICK - 1]
    removed = set(junk)
    kept = [key for key in partitions if key not in removed]
    cursor = seen.after(new, last, last_partition=kept[-1] if kept else None).dump()
    removals: list[dg.AddDynamicPartitionsRequest | dg.DeleteDynamicPartitionsRequest] = (
        [batches.build_delete_request(junk)] if junk else []
    )
    if not new:
        if removals:
            return dg.SensorResult(cursor=cursor, dynamic_partitions_requests=removals)
        # Not logged: a log is a file per tick in Dagster's compute log storage, every 5 s.
        return dg.SensorResult(cursor=cursor, skip_reason="no new batch")
    known = set(partitions)
    unpartitioned = [b.id for b in new if b.id not in known]
    runs = [
        dg.RunRequest(
            partition_key=b.id,
            run_key=f"new-batch:{b.id}",
            tags=batch_run_tags(b.id, "sensor", b.user_id),
        )
        for b in new
    ]
    context.log.info(
        f"{len(new)} new batch(es) ({len(new) - len(unpartitioned)} with a partition already: "
        f"create_batch, or reported by a re-polling run); {len(runs)} run(s) requested"
    )
    return dg.SensorResult(
        run_requests=runs,
        dynamic_partitions_requests=(
            [batches.build_add_request(unpartitioned), *removals] if unpartitioned else removals
        ),
        cursor=cursor,
    )


def _skip(context: dg.SensorEvaluationContext, reason: str) -> dg.SkipReason:
    context.log.info(reason)  # shown under the tick's "View logs", not only on hover
    return dg.SkipReason(reason)


def _naming_no_batch(
    context: dg.SensorEvaluationContext,
    app_db: AppDatabase,
    partitions: list[str],
    last_checked: str | None,
) -> list[str]:
    """The partitions added after ``last_checked`` that name no batch (all of them when it is
    gone: an operator removed it, so that none is skipped)."""
    at = partitions.index(last_checked) + 1 if last_checked in partitions else 0
    fresh = partitions[at:]
    if not fresh:
        return []
    found = existing_batch_ids(app_db.engine(), fresh)
    junk = [key for key in fresh if key not in found]
    if junk:
        context.log.info(
            f"removing {len(junk)} partition(s) that name no batch (added by hand?): "
            + ", ".join(junk[:10])
            + (" ..." if len(junk) > 10 else "")
        )
    return junk


@dataclass(frozen=True)
class _Cursor:
    """The newest ``created_at`` seen, the batches requested within ``LOOKBACK`` of it
    (id -> created_at), and the last partition checked for naming a batch."""

    high_water: datetime | None
    requested: dict[str, str]
    last_partition: str | None = None

    @classmethod
    def parse(cls, text: str | None) -> "_Cursor":
        if not text:
            return cls(None, {})
        if not text.startswith("{"):  # a cursor of an earlier version: the mark alone
            return cls(datetime.fromisoformat(text), {})
        data = json.loads(text)
        mark = data.get("high_water")
        return cls(
            datetime.fromisoformat(mark) if mark else None,
            dict(data.get("requested", {})),
            data.get("last_partition"),
        )

    def after(
        self, new: list[BatchHeader], last: BatchHeader | None, *, last_partition: str | None
    ) -> "_Cursor":
        """This cursor once ``new`` are requested, the window was read up to ``last``, and
        the partitions up to ``last_partition`` are known to name batches."""
        high_water = self.high_water
        if last is not None:
            high_water = max(high_water or last.created_at, last.created_at)
        requested = self.requested | {b.id: b.created_at.isoformat() for b in new}
        if high_water is not None:
            oldest = high_water - LOOKBACK
            requested = {
                b: at for b, at in requested.items() if datetime.fromisoformat(at) >= oldest
            }
        return _Cursor(high_water, requested, last_partition)

    def dump(self) -> str | None:
        if self.high_water is None and self.last_partition is None:
            return None
        return json.dumps(
            {
                "high_water": self.high_water.isoformat() if self.high_water else None,
                "requested": self.requested,
                "last_partition": self.last_partition,
            }
        )
