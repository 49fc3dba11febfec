"""Materialize one batch's partition in this process, against a given Dagster instance.

Used by ``grsai-pipeline run`` and ``demo``: the run is an ordinary ``batch_pipeline`` run in
the instance (so it shows in the UI), but it bypasses the run queue; the database claims keep
it safe beside runs the daemon launched.
"""

from __future__ import annotations

from dataclasses import dataclass

import dagster as dg
from sqlalchemy.exc import IntegrityError

from grsai_pipeline.defs.assets import BATCH_STEP, FollowConfig
from grsai_pipeline.defs.jobs import batch_pipeline
from grsai_pipeline.defs.partitions import BATCHES
from grsai_pipeline.defs.runs import batch_run_tags

# The caller reports a failed run in its own words; Dagster's console log would repeat it with
# stack traces. The events stay in the instance for the UI.
QUIET_CONSOLE = {"console": {"config": {"log_level": "CRITICAL"}}}


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
    from grsai_pipeline.definitions import defs

    ensure_partition(instance, batch_id)
    run_config = dg.RunConfig(
        ops={BATCH_STEP: FollowConfig(budget_s=poll_budget_s)},
        loggers=QUIET_CONSOLE if quiet else None,
    )
    result = defs.resolve_job_def(batch_pipeline.name).execute_in_process(
        run_config=run_config,
        instance=instance,
        partition_key=batch_id,
        tags=batch_run_tags(batch_id, trigger),
        raise_on_error=False,
    )
    return RunResult(result.run_id, result.success, None if result.success else _failure(result))


def ensure_partition(instance: dg.DagsterInstance, batch_id: str) -> None:
    """Add the batch's partition unless it exists; another runner may add it at the same time."""
    if instance.has_dynamic_partition(BATCHES, batch_id):
        return
    try:
        instance.add_dynamic_partitions(BATCHES, [batch_id])
    except IntegrityError:
        if not instance.has_dynamic_partition(BATCHES, batch_id):
            raise


def _failure(result: dg.ExecuteInProcessResult) -> str:
    """The first step failure's own message (a Failure's description, else the error)."""
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
