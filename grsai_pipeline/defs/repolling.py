"""``repoll_open_batches``: one run that follows every open batch no other run works on.

Started by ``repoll_processing_schedule`` (at most one at a time). Its op polls every
unfinished task of those batches through one client in one event loop, resubmits what may be
retried, settles each batch whose tasks are all final, and reports each batch it touched as
that batch's own materialization of ``polled_results`` (and ``settled_ledger`` when it
settles), with the asset checks' results, so the batch's partition page keeps its history.
"""

# No "from __future__ import annotations": Dagster reads these hints at definition time.
import time
from collections.abc import Iterator

import dagster as dg

from grsai_pipeline.config import SettingsError
from grsai_pipeline.defs.assets import API_POOL, LEDGER_CHECK, VIDEO_CHECK
from grsai_pipeline.defs.metadata import batch_metadata
from grsai_pipeline.defs.partitions import BATCHES
from grsai_pipeline.defs.resources import AppDatabase, GrsaiApi
from grsai_pipeline.defs.runs import REPOLL_JOB, batches_with_live_runs
from grsai_pipeline.engine.loop import Until
from grsai_pipeline.engine.report import EngineReport
from grsai_pipeline.engine.work import open_batches_worker
from grsai_pipeline.grsai.errors import RunStopped
from grsai_pipeline.store.audit import ledger_problems, succeeded_without_video
from grsai_pipeline.store.batches import get_batch

# How long one re-polling run works; the schedule starts the next one each minute.
DEFAULT_BUDGET_S = 45.0
# Materializations are written between periods of this length.
REPORT_EVERY_S = 15.0


class RepollConfig(dg.Config):
    """``budget_s``: how long this run follows the open batches before it ends."""

    budget_s: float = DEFAULT_BUDGET_S


@dg.op(pool=API_POOL, out=dg.Out(dg.Nothing))
def repoll_open_batches_op(
    context: dg.OpExecutionContext, config: RepollConfig, app_db: AppDatabase, grsai: GrsaiApi
) -> Iterator[dg.AssetMaterialization | dg.AssetCheckEvaluation | dg.Output[None]]:
    """Follow every open batch that no run of its own is working on."""
    try:
        settings = grsai.settings()
        deadline = time.monotonic() + config.budget_s
        totals = EngineReport()
        reported: set[str] = set()
        with open_batches_worker(
            app_db.engine(),
            settings,
            context.run.run_id,
            lambda: batches_with_live_runs(context.instance),
        ) as worker:
            while True:
                period = min(REPORT_EVERY_S, max(0.0, deadline - time.monotonic()))
                report = worker.run(Until.FINAL, period)
                _add(totals, report)
                yield from _batch_events(context, app_db, report, reported)
                if report.unfinished == 0 or time.monotonic() >= deadline:
                    break
    except (RunStopped, SettingsError) as exc:
        raise dg.Failure(description=str(exc), allow_retries=False) from None
    context.log.info(
        f"followed {len(totals.batches)} batch(es): {totals.polls} polls, "
        f"{totals.submits} submits, {dict(totals.outcomes())}"
    )
    yield dg.Output(
        None,
        metadata={
            "batches_touched": len(totals.batches),
            "polls": totals.polls,
            "submits": totals.submits,
            "possible_duplicates": totals.possible_duplicates,
            **totals.api_metadata(),
        },
    )


def _add(totals: EngineReport, report: EngineReport) -> None:
    totals.polls += report.polls
    totals.submits += report.submits
    totals.possible_duplicates += report.possible_duplicates
    totals.api_calls += report.api_calls
    totals.api_retries += report.api_retries
    totals.api_429s += report.api_429s
    for batch_id, activity in report.batches.items():
        mine = totals.batch(batch_id)
        for name in ("accepted", "answered", "succeeded", "failed", "retried"):
            setattr(mine, name, getattr(mine, name) + getattr(activity, name))


def _batch_events(
    context: dg.OpExecutionContext,
    app_db: AppDatabase,
    report: EngineReport,
    reported: set[str],
) -> Iterator[dg.AssetMaterialization | dg.AssetCheckEvaluation]:
    """A materialization per batch whose tasks moved (or, once per run, progressed)."""
    settled_ids = {s.batch_id for s in report.settled}
    moved = {
        batch_id
        for batch_id, a in report.batches.items()
        if a.accepted or a.succeeded or a.failed or a.retried or batch_id not in reported
    }
    touched = sorted(moved | settled_ids)
    _ensure_partitions(context.instance, touched)
    for batch_id in touched:
        reported.add(batch_id)
        view = get_batch(app_db.engine(), batch_id, task_limit=20)
        metadata = {**batch_metadata(view), "repoll_run": dg.MetadataValue.text(context.run_id)}
        yield dg.AssetMaterialization(
            asset_key="polled_results", partition=batch_id, metadata=metadata
        )
        activity = report.batches.get(batch_id)
        if not (batch_id in settled_ids or (activity and (activity.succeeded or activity.failed))):
            continue  # only progress: the checks' answers cannot have changed
        missing = succeeded_without_video(app_db.engine(), batch_id)
        yield dg.AssetCheckEvaluation(
            asset_key=dg.AssetKey("polled_results"),
            check_name=VIDEO_CHECK.name,
            passed=not missing,
            metadata={"tasks_without_video": dg.MetadataValue.json(missing)},
            partition=batch_id,
        )
        if batch_id in settled_ids:
            yield dg.AssetMaterialization(
                asset_key="settled_ledger",
                partition=batch_id,
                metadata={**metadata, "settlement": "settled"},
            )
            problems = ledger_problems(app_db.engine(), batch_id)
            yield dg.AssetCheckEvaluation(
                asset_key=dg.AssetKey("settled_ledger"),
                check_name=LEDGER_CHECK.name,
                passed=not problems,
                metadata={"problems": dg.MetadataValue.json(problems)},
                partition=batch_id,
            )


def _ensure_partitions(instance: dg.DagsterInstance, batch_ids: list[str]) -> None:
    """A batch the sensor has not seen yet still gets its partition before its events."""
    known = set(instance.get_dynamic_partitions(BATCHES))
    missing = [b for b in batch_ids if b not in known]
    if missing:
        instance.add_dynamic_partitions(BATCHES, missing)


@dg.job(
    name=REPOLL_JOB,
    executor_def=dg.in_process_executor,
    description="Follows every open batch that no run of its own works on (one run at a time).",
)
def repoll_open_batches() -> None:
    repoll_open_batches_op()
