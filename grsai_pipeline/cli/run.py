"""``run``: materialize a batch's partition through Dagster in this process."""

from __future__ import annotations

import click

from grsai_pipeline.cli import context, process
from grsai_pipeline.cli.views import describe_batch
from grsai_pipeline.domain.states import BatchStatus
from grsai_pipeline.errors import RunFailed
from grsai_pipeline.store.batches import get_batch


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
    settings = context.settings()
    settings.require_api_key()
    get_batch(context.database(settings), batch_id, with_tasks=False)  # UnknownBatch: exit 2
    process.pause_collecting()  # until run_until starts the run
    # Dagster is imported here, not at the top: the other commands never need it.
    from grsai_pipeline.cli.dagster_run import open_instance, run_until

    with open_instance(settings) as instance:
        view = run_until(instance, settings, batch_id, until_settled=until_settled, timeout=timeout)
    click.echo(describe_batch(view))
    if until_settled and view.status != BatchStatus.SETTLED:
        raise RunFailed(
            f"batch {batch_id} is not settled after {timeout} s: {view.unfinished} unfinished"
        )
