"""``repoll_open_batches``: one run that follows every open batch.

Started by ``repoll_processing_schedule`` (one at work; the next takes over after
``HANDOVER_AFTER_S``, see ``defs/schedules.py``). Its op submits and polls the unfinished
tasks of every open batch through one client in one event loop, sharing them task by task
with whatever other engines are live (a batch's own run, the command line: store/polls.py),
resubmits what may be retried, settles each batch whose tasks are all final, and reports the
batches it sent to or settled, and at their turn those whose tasks only progressed or ended
(``PROGRESS_EVERY_RUNS``), as each batch's own materialization of ``polled_results`` (and
``settled_ledger`` when it settles it), with the asset checks' results, so the batch's
partition page keeps its history.

A batch settled in the last day whose partition has no ``settled_ledger`` materialization (its
run died between the settlement's commit and the event; a cancel or an intake settled it with
no run about) gets one from the next re-polling run.

It also copies the videos of every succeeded task not archived yet, of any batch, to
``GRSAI_ARCHIVE_URL`` (SPEC 8), in a third thread for the same time, and reports each batch
whose archive changed as a materialization of ``archived_videos`` with its check.

The engine works in a thread of its own while the op writes those events: an event costs
milliseconds on PostgreSQL and about 18 ms on a local SQLite instance (measured), and a
thousand batches must not stop the polling for the time it takes to report them.
"""

# No "from __future__ import annotations": Dagster reads these hints at definition time.
import queue
import threading
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import dagster as dg

from grsai_pipeline.defs.assets import SETTLED
from grsai_pipeline.defs.partitions import BATCHES
from grsai_pipeline.defs.reports import (
    BatchSnapshot,
    archived_report,
    polled_report,
    settled_report,
    snapshots,
)
from grsai_pipeline.defs.resources import AppDatabase, GrsaiApi
from grsai_pipeline.defs.runs import REPOLL_JOB, REPOLL_TAG, STANDBY_TAG, TRIGGER_TAG
from grsai_pipeline.domain.states import RetryPolicy
from grsai_pipeline.engine.loop import Until
from grsai_pipeline.engine.report import EngineReport
from grsai_pipeline.engine.work import open_batches_worker
from grsai_pipeline.errors import RunStopped, SettingsError
from grsai_pipeline.store.archives import archive_state
from grsai_pipeline.store.audit import ledger_problems, succeeded_without_video_in
from grsai_pipeline.store.batches import settled_since
from grsai_pipeline.store.columns import utc_now
from grsai_pipeline.store.db import reading
from grsai_pipeline.store.outcomes import batch_outcomes
from grsai_pipeline.videos.archiver import ArchiveReport, archive_videos

# How long one re-polling run works at most. Runs hand over without a gap: once a run is
# HANDOVER_AFTER_S old, the schedule starts the next one, and the older run ends as soon as
# the newer one's engine is up (engine/scope.py). The budget only ends a run nobody relieved.
DEFAULT_BUDGET_S = 360.0
HANDOVER_AFTER_S = 180.0
# With nothing open, a run stays up this long (reading the database every IDLE_READ_S), so that
# the next batch's first submits come within seconds, not after a sensor tick and a run start.
DEFAULT_LINGER_S = 120.0
IDLE_READ_S = 2.0
# A stand-by run (defs/standby.py) works this long, lingering all of it: one run an hour in
# the UI while nothing is open.
STANDBY_BUDGET_S = 3600.0
# Settled batches this recent are checked for a missing settled_ledger event by each run.
UNREPORTED_WITHIN = timedelta(days=1)
# The engine hands over what it did at least this often.
REPORT_EVERY_S = 10.0
# A batch whose tasks only progressed, were sent again, or ended without settling it, is
# reported in one minute in this many (its turn comes from its id), once in that minute: a
# thousand open batches cost two hundred events a minute, not a thousand. Reported at every
# end, with five runs sharing each batch's tasks, 1,000 batches of 20 cost 12,390
# materializations and 9,882 check evaluations, about 29 % of the runs' CPU on a machine that
# had none to spare (BENCHMARKS.md).
PROGRESS_EVERY_RUNS = 5
# With no video to copy, the archiver looks again this often; with videos waiting, it checks
# this often whether the run is ending.
ARCHIVE_IDLE_S = 5.0
ARCHIVE_SLICE_S = 10.0


class RepollConfig(dg.Config):
    """``budget_s``: how long this run follows the open batches before it ends; ``linger_s``:
    how long it stays up with no batch open (within its budget)."""

    budget_s: float = DEFAULT_BUDGET_S
    linger_s: float = DEFAULT_LINGER_S


def budget_for(runs: int) -> float:
    """A scheduled re-polling run's budget when GRSAI_REPOLL_RUNS is ``runs``.

    The schedule relieves one run at a time (the queue allows one run more than ``runs``), each
    once it is HANDOVER_AFTER_S old; runs started together need room for every relief before
    any budget ends. With a flat 6 minutes, of five runs started at once four ended by their
    budget within 20 s of one another, every 7 minutes, and their tasks waited up to 123 s for
    the next runs to start (1,000 x 20 under dagster dev, BENCHMARKS.md)."""
    return DEFAULT_BUDGET_S + (runs - 1) * HANDOVER_AFTER_S


def budget_config(budget_s: float, linger_s: float = DEFAULT_LINGER_S) -> dict[str, Any]:
    """The run config of a re-polling run that works ``budget_s`` (lingering ``linger_s``)."""
    budget = {"budget_s": budget_s, "linger_s": linger_s}
    return {"ops": {"repoll_open_batches_op": {"config": budget}}}


def standby_request(run_key: str, trigger: str) -> dg.RunRequest:
    """A stand-by re-polling run: up for ``STANDBY_BUDGET_S`` even with nothing open; a batch
    that arrives meanwhile is followed as by any re-polling run (the schedule's runs relieve it
    after ``HANDOVER_AFTER_S``)."""
    return dg.RunRequest(
        job_name=REPOLL_JOB,
        run_key=run_key,
        run_config=budget_config(STANDBY_BUDGET_S, STANDBY_BUDGET_S),
        tags={REPOLL_TAG: "all", STANDBY_TAG: "true", TRIGGER_TAG: trigger},
    )


@dataclass
class _Shown:
    """What this run has reported of each batch: the batches it reported, the minute of each
    one's last report at its turn, and those whose tasks were sent or ended since it last
    reported them (``ended``: those whose tasks ended, for the video check)."""

    reported: set[str] = field(default_factory=set)
    turn_minute: dict[str, int] = field(default_factory=dict)
    changed: set[str] = field(default_factory=set)
    ended: set[str] = field(default_factory=set)


@dataclass
class _Totals:
    polls: int = 0
    submits: int = 0
    possible_duplicates: int = 0
    api_calls: int = 0
    longest_read_s: float = 0.0
    batches: set[str] = field(default_factory=set)

    def add(self, report: EngineReport) -> None:
        self.polls += report.polls
        self.submits += report.submits
        self.possible_duplicates += report.possible_duplicates
        self.api_calls += report.api_calls
        self.longest_read_s = max(self.longest_read_s, report.longest_read_s)
        self.batches |= set(report.batches) | {s.batch_id for s in report.settled}


# No pool slot: the one run that keeps every open task polled must never queue behind runs
# of single batches holding the grsai_api pool (measured under the production instance); its
# own tag limit in dagster.yaml (grsai/repoll: 2) bounds what it adds to the API's load.
@dg.op(out=dg.Out(dg.Nothing))
def repoll_open_batches_op(
    context: dg.OpExecutionContext, config: RepollConfig, app_db: AppDatabase, grsai: GrsaiApi
) -> Iterator[dg.AssetMaterialization | dg.AssetCheckEvaluation | dg.Output[None]]:
    """Follow every open batch, task by task beside the other engines at work."""
    settings = grsai.settings()
    reports: queue.Queue[EngineReport | BaseException | None] = queue.Queue()
    stop = threading.Event()

    def work() -> None:
        deadline = time.monotonic() + config.budget_s
        idle_since: float | None = None
        try:
            with open_batches_worker(app_db.engine(), settings, context.run.run_id) as w:
                while not stop.is_set():
                    period = min(REPORT_EVERY_S, max(0.0, deadline - time.monotonic()))
                    report = w.run(Until.FINAL, period)
                    reports.put(report)
                    now = time.monotonic()
                    if report.handed_over or now >= deadline:
                        break
                    if report.unfinished or report.handing_over:
                        idle_since = None
                        continue
                    idle_since = now if idle_since is None else idle_since
                    if now - idle_since >= config.linger_s:
                        break
                    stop.wait(min(IDLE_READ_S, deadline - now))
        except BaseException as error:  # handed to the op's thread, which raises it
            reports.put(error)
        finally:
            reports.put(None)

    archived: list[ArchiveReport] = []

    def archive() -> None:
        deadline = time.monotonic() + config.budget_s
        while not stop.is_set() and (left := deadline - time.monotonic()) > 0:
            # In slices, so the run ends soon after its engine: with videos always waiting, one
            # call took the whole budget, and a stand-by run that had handed over kept its
            # grsai/repoll slot for an hour, so the next relief waited in the queue.
            report = archive_videos(app_db.engine(), settings, budget_s=min(left, ARCHIVE_SLICE_S))
            archived.append(report)
            if not report.batches:
                stop.wait(min(ARCHIVE_IDLE_S, max(0.0, deadline - time.monotonic())))

    engine = threading.Thread(target=work, name="repoll-engine", daemon=True)
    engine.start()
    archiver = threading.Thread(target=archive, name="repoll-archive", daemon=True)
    archiver.start()
    totals, shown = _Totals(), _Shown()
    yield from _unreported_settlements(context, app_db, settings.retry_policy)
    try:
        while (report := reports.get()) is not None:
            if isinstance(report, RunStopped | SettingsError):
                raise dg.Failure(description=str(report), allow_retries=False)
            if isinstance(report, BaseException):
                raise report
            totals.add(report)
            yield from _batch_events(context, app_db, settings.retry_policy, report, shown)
    finally:
        stop.set()
        engine.join()
        archiver.join()
    yield from _archive_events(context, app_db, settings.retry_policy, archived)
    context.log.info(
        f"followed {len(totals.batches)} batch(es): {totals.polls} polls, {totals.submits} submits"
    )
    yield dg.Output(
        None,
        metadata={
            "batches_touched": len(totals.batches),
            "polls": totals.polls,
            "submits": totals.submits,
            "possible_duplicates": totals.possible_duplicates,
            "api_calls": totals.api_calls,
            # The longest read of the database for new work: a slow one makes reads rarer.
            "longest_read_s": round(totals.longest_read_s, 3),
        },
    )


def _batch_events(
    context: dg.OpExecutionContext,
    app_db: AppDatabase,
    policy: RetryPolicy,
    report: EngineReport,
    shown: _Shown,
) -> Iterator[dg.AssetMaterialization | dg.AssetCheckEvaluation]:
    """A materialization per batch this run first sent tasks of, retried or settled; per batch
    whose tasks progressed or ended since this run's last report of it, one at its turn; the
    video check where tasks ended."""
    settled = {s.batch_id for s in report.settled}
    shown.ended |= {b for b, a in report.batches.items() if a.succeeded or a.failed}
    shown.changed |= shown.ended | {b for b, a in report.batches.items() if a.accepted}
    minute = int(time.time() // 60)
    due = (set(report.batches) - shown.reported) | shown.changed
    at_turn = {
        b
        for b in due
        if zlib.crc32(b.encode()) % PROGRESS_EVERY_RUNS == minute % PROGRESS_EVERY_RUNS
        and shown.turn_minute.get(b) != minute
    }
    # Sent again (five engines claim a batch's tasks in turns): shown at its turn.
    first = set(report.batches) - shown.reported
    sent = {b for b, a in report.batches.items() if a.retried or (a.accepted and b in first)}
    touched = sorted(sent | settled | at_turn)
    if not touched:
        return
    _ensure_partitions(context.instance, touched)
    snaps = snapshots(app_db.engine(), touched, policy)
    # The checks' answers cannot have changed where no task ended.
    ended = sorted((shown.ended | settled).intersection(touched))
    missing = succeeded_without_video_in(app_db.engine(), ended)
    extra = {"repoll_run": context.run_id}
    for batch_id in touched:
        shown.reported.add(batch_id)
        shown.changed.discard(batch_id)
        shown.ended.discard(batch_id)
        if batch_id in at_turn:
            shown.turn_minute[batch_id] = minute
        yield from polled_report(snaps[batch_id], extra, missing.get(batch_id)).events()
        if batch_id in settled:
            yield from _settled_events(app_db, snaps[batch_id], extra)


def _settled_events(
    app_db: AppDatabase, snap: BatchSnapshot, extra: dict[str, Any]
) -> Iterator[dg.AssetMaterialization | dg.AssetCheckEvaluation]:
    """A settled batch's ``settled_ledger`` materialization and its checks' results."""
    problems = ledger_problems(app_db.engine(), snap.view.batch_id)
    yield from settled_report(snap, extra, "settled", problems).events()


def _unreported_settlements(
    context: dg.OpExecutionContext, app_db: AppDatabase, policy: RetryPolicy
) -> Iterator[dg.AssetMaterialization | dg.AssetCheckEvaluation]:
    """``settled_ledger`` for each batch settled in the last ``UNREPORTED_WITHIN`` that has no
    materialization of it yet."""
    with reading(app_db.engine()) as conn:
        recent = settled_since(conn, utc_now() - UNREPORTED_WITHIN)
    if not recent:
        return
    reported = context.instance.get_materialized_partitions(SETTLED.key)
    missing = [b for b in recent if b not in reported]
    if not missing:
        return
    context.log.info(f"{len(missing)} settled batch(es) had no settled_ledger event: reported")
    _ensure_partitions(context.instance, missing)
    snaps = snapshots(app_db.engine(), missing, policy)
    for batch_id in missing:
        yield from _settled_events(app_db, snaps[batch_id], {"repoll_run": context.run_id})


def _archive_events(
    context: dg.OpExecutionContext,
    app_db: AppDatabase,
    policy: RetryPolicy,
    reports: list[ArchiveReport],
) -> Iterator[dg.AssetMaterialization | dg.AssetCheckEvaluation]:
    """An ``archived_videos`` materialization and check per batch whose videos were copied
    (or found expired) by this run."""
    touched = sorted(set().union(*(r.batches for r in reports))) if reports else []
    if not touched:
        return
    _ensure_partitions(context.instance, touched)
    states = archive_state(app_db.engine(), touched)
    with reading(app_db.engine()) as conn:
        outcomes = batch_outcomes(conn, touched, policy=policy)
    extra = {"repoll_run": context.run_id}
    for batch_id in touched:
        yield from archived_report(batch_id, states[batch_id], outcomes[batch_id], extra).events()


def _ensure_partitions(instance: dg.DagsterInstance, batch_ids: list[str]) -> None:
    """A batch the sensor has not seen yet still gets its partition before its events."""
    known = set(instance.get_dynamic_partitions(BATCHES))
    missing = [b for b in batch_ids if b not in known]
    if missing:
        instance.add_dynamic_partitions(BATCHES, missing)


@dg.job(
    name=REPOLL_JOB,
    executor_def=dg.in_process_executor,
    description="Follows every open batch, task by task beside other runs (one at a time).",
)
def repoll_open_batches() -> None:
    repoll_open_batches_op()
