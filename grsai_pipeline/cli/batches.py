"""``batch create`` and ``batch status``."""

from __future__ import annotations

import json

import click

from grsai_pipeline.cli import context
from grsai_pipeline.cli.batch_file import read_batch_file
from grsai_pipeline.cli.views import batch_json, describe_batch, tasks_table
from grsai_pipeline.errors import InvalidInput
from grsai_pipeline.store.batches import create_batch, get_batch


@click.group()
def batch() -> None:
    """Batches of video tasks."""


@batch.command("create")
@click.argument("file", type=click.Path(dir_okay=False, allow_dash=True))
@click.option("--user", required=True, help="The user whose credits pay for the batch.")
def create(file: str, user: str) -> None:
    """Create a batch from FILE (a JSON list of tasks; - reads stdin) and reserve its credits.

    Prints the new batch id alone on stdout.
    """
    if not user.strip():
        raise InvalidInput("--user", "must not be empty")
    tasks = read_batch_file(file)
    settings = context.settings()
    new = create_batch(context.database(settings), user, tasks, settings.price_table)
    click.echo(new.batch_id)
    click.echo(
        f"{new.total_tasks} task(s), {new.invalid_tasks} invalid, "
        f"{new.reserved_credits} credits reserved",
        err=True,
    )


@batch.command("status")
@click.argument("batch_id")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def status(batch_id: str, as_json: bool) -> None:
    """Show a batch: status, counts per task status, credits, and every task."""
    view = get_batch(context.database(context.settings()), batch_id)
    if as_json:
        click.echo(json.dumps(batch_json(view), ensure_ascii=False))
    else:
        click.echo(describe_batch(view))
        click.echo(tasks_table(view))
