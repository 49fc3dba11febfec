"""Runs of one batch's partition through Dagster, in this process (``run`` and ``demo``).

The run is an ordinary ``batch_pipeline`` run of the code location's definitions in the
instance of ``DAGSTER_HOME`` (so it shows in the UI), but it bypasses the run queue; the
database claims keep it safe beside runs the daemon launched. Dagster is imported only by the
commands that come here.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import dagster as dg

from grsai_pipeline.cli import context, process
from grsai_pipeline.cli.progress import batch_progress
from grsai_pipeline.config import Settings
from grsai_pipeline.definitions import defs
from grsai_pipeline.defs.assets import BATCH_STEP, FollowConfig
from grsai_pipeline.defs.jobs import batch_pipeline
from grsai_pipeline.defs.partitions import ensure_partition
from grsai_pipeline.defs.runs import batch_run_tags
from grsai_pipeline.domain.states import BatchStatus
from grsai_pipeline.errors import RunFailed, SettingsError
from grsai_pipeline.store.batches import BatchView, get_batch

# The caller reports a failed run in its own words; Dagster's console log would repeat it with
# stack traces. The events stay in the instance for the UI.
QUIET_CONSOLE = {"console": {"config": {"log_level": "CRITICAL"}}}


def open_instance(settings: Settings) -> dg.DagsterInstance:
    """The Dagster instance in ``DAGSTER_HOME`` (read from the settings, so ``.env`` counts)."""
    if not settings.dagster_home:
        raise SettingsError(
            "DAGSTER_HOME is not set: set it to a directory for Dagster's run history",
            "DAGSTER_HOME",
        )
    home = Path(settings.dagster_home).expanduser()
    if not home.is_dir():
        raise SettingsError(f"invalid setting DAGSTER_HOME: {home} is not a directory")
    os.environ["DAGSTER_HOME"] = str(home.resolve())
    return dg.DagsterInstance.get()


def run_until(
    instance: dg.DagsterInstance,
    settings: Settings,
    batch_id: str,
    *,
    until_settled: bool,
    timeout: float | None,
    progress: bool | None = None,
) -> BatchView:
    """One run, or runs until settled; each run's poll budget never outlasts the timeout.
    Raises RunFailed when a run fails."""
    process.collect_from_here()
    engine = context.database(settings)
    deadline = None if timeout is None else time.monotonic() + timeout
    with batch_progress(engine, batch_id, enabled=progress):
        while True:
            budget = settings.poll_budget_s
            if deadline is not None:
                budget = max(0.0, min(budget, deadline - time.monotonic()))
            result = run_batch(instance, batch_id, poll_budget_s=budget, trigger="cli")
            if not result.success:
                raise RunFailed(f"run {result.run_id} failed: {result.failure}")
            view = get_batch(engine, batch_id, with_tasks=False)
            if not until_settled or view.status == BatchStatus.SETTLED:
                return view
            if deadline is not None and time.monotonic() >= deadline:
                return view


@dataclass(frozen=True)
class RunResult:
    run_id: str
    success: bool
    failure: str | None


def run_batch(
    instance: dg.DagsterInstance,
    batch_id: str,
    *,
    poll_budget_s: float | None,
    trigger: str,
    quiet: bool = True,
) -> RunResult:
    """One run of ``batch_pipeline`` for the batch; adds its partition when missing."""
    ensure_partition(instance, batch_id)
    result = defs.resolve_job_def(batch_pipeline.name).execute_in_process(
        run_config=dg.RunConfig(
            ops={BATCH_STEP: FollowConfig(budget_s=poll_budget_s)},
            loggers=QUIET_CONSOLE if quiet else None,
        ),
        instance=instance,
        partition_key=batch_id,
        tags=batch_run_tags(batch_id, trigger),
        raise_on_error=False,
    )
    return RunResult(result.run_id, result.success, None if result.success else _failure(result))


def _failure(result: dg.ExecuteInProcessResult) -> str:
    """The first step failure's own message (a Failure's description, else the error's cause)."""
    for event in result.all_events:
        if event.event_type != dg.DagsterEventType.STEP_FAILURE:
            continue
        data = event.step_failure_data
        if data.user_failure_data is not None and data.user_failure_data.description:
            return data.user_failure_data.description
        if data.error is not None:
            # Dagster's own wrapper says only which op failed; the cause says why.
            error = data.error.cause or data.error
            return error.message.strip()
    return "the run failed; see its events in the Dagster UI"
