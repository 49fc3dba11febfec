"""``run``: materialize a batch's partition through Dagster in this process."""

from __future__ import annotations

import gc
import time
from pathlib import Path
from typing import TYPE_CHECKING

import click

from grsai_pipeline.cli import process
from grsai_pipeline.cli.batches import describe_batch
from grsai_pipeline.cli.errors import BadInput, Failed, database_or_exit, settings_or_exit
from grsai_pipeline.cli.progress import batch_progress
from grsai_pipeline.config import Settings, SettingsError
from grsai_pipeline.domain.states import BatchStatus
from grsai_pipeline.store.batches import BatchView, get_batch
from grsai_pipeline.store.errors import UnknownBatch

if TYPE_CHECKING:
    import dagster as dg


@click.command()
@click.argument("batch_id")
@click.option("--until-settled", is_flag=True, help="Run again until the batch is settled.")
@click.option(
    "--timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="Give up after this many seconds (exit 1 if not settled by then).",
)
def run(batch_id: str, until_settled: bool, timeout: float | None) -> None:
    """Run BATCH_ID through Dagster here, against the instance in DAGSTER_HOME.

    A run of a settled batch retries its retryable failures (a new reservation each).
    """
    settings = settings_or_exit()
    try:
        settings.require_api_key()
    except SettingsError as exc:
        raise BadInput(str(exc)) from None
    engine = database_or_exit(settings)
    try:
        get_batch(engine, batch_id, with_tasks=False)
    except UnknownBatch as exc:
        raise BadInput(str(exc)) from None
    with open_instance(settings) as instance:
        view = run_until(instance, settings, batch_id, until_settled=until_settled, timeout=timeout)
    click.echo(describe_batch(view))
    if until_settled and view.status != BatchStatus.SETTLED:
        raise Failed(
            f"batch {batch_id} is not settled after {timeout} s: {view.unfinished} unfinished"
        )


def open_instance(settings: Settings) -> dg.DagsterInstance:
    """The Dagster instance in ``DAGSTER_HOME`` (read from the settings, so ``.env`` counts)."""
    # Dagster is imported here, not at the top: the other commands never need it.
    import dagster as dg
    from dagster._core.instance.ref import InstanceRef

    if not settings.dagster_home:
        raise BadInput("DAGSTER_HOME is not set: set it to a directory for Dagster's run history")
    home = Path(settings.dagster_home).expanduser()
    if not home.is_dir():
        raise BadInput(f"invalid setting DAGSTER_HOME: {home} is not a directory")
    return dg.DagsterInstance.from_ref(InstanceRef.from_dir(str(home.resolve())))


def run_until(
    instance: dg.DagsterInstance,
    settings: Settings,
    batch_id: str,
    *,
    until_settled: bool,
    timeout: float | None,
    progress: bool | None = None,
) -> BatchView:
    """One run, or runs until settled; each run's poll budget never outlasts the timeout."""
    from grsai_pipeline.defs.in_process import run_batch

    if process.whole:
        # Everything imported so far lives until exit: keep the collector from walking it
        # again and again while the run allocates (3-9% of a run's CPU, measured).
        gc.freeze()
    engine = database_or_exit(settings)
    deadline = None if timeout is None else time.monotonic() + timeout
    with batch_progress(engine, batch_id, enabled=progress):
        while True:
            budget = settings.poll_budget_s
            if deadline is not None:
                budget = max(0.0, min(budget, deadline - time.monotonic()))
            result = run_batch(instance, batch_id, poll_budget_s=budget, trigger="cli")
            if not result.success:
                raise Failed(f"run {result.run_id} failed: {result.failure}")
            view = get_batch(engine, batch_id, with_tasks=False)
            if not until_settled or view.status == BatchStatus.SETTLED:
                return view
            if deadline is not None and time.monotonic() >= deadline:
                return view
