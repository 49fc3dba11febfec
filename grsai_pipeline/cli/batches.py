"""``batch create``, ``batch status``, ``batch list`` and ``batch cancel``."""

from __future__ import annotations

import json

import click

from grsai_pipeline.cli import context
from grsai_pipeline.cli.batch_file import read_batch_file
from grsai_pipeline.cli.views import (
    batch_json,
    batch_list_json,
    batch_list_table,
    describe_batch,
    tasks_table,
)
from grsai_pipeline.domain.states import BatchStatus
from grsai_pipeline.errors import InvalidInput
from grsai_pipeline.store.batches import create_batch, get_batch, list_batches
from grsai_pipeline.store.cancels import cancel_batch

IDEMPOTENCY_HELP = (
    "Make a retry safe: the same key with the same request returns the first answer and "
    "writes nothing; with another request it is refused (exit 2). Keys are per user."
)


@click.group()
def batch() -> None:
    """Batches of video tasks."""


@batch.command("create")
@click.argument("file", type=click.Path(dir_okay=False, allow_dash=True))
@click.option("--user", required=True, help="The user whose credits pay for the batch.")
@click.option("--idempotency-key", default=None, metavar="KEY", help=IDEMPOTENCY_HELP)
def create(file: str, user: str, idempotency_key: str | None) -> None:
    """Create a batch from FILE (a JSON list of tasks; - reads stdin) and reserve its credits.

    Prints the new batch id alone on stdout.
    """
    if not user.strip():
        raise InvalidInput("--user", "must not be empty")
    tasks = read_batch_file(file)
    settings = context.settings()
    new = create_batch(
        context.database(settings),
        user,
        tasks,
        settings.price_table,
        idempotency_key=idempotency_key,
    )
    click.echo(new.batch_id)
    replayed = " (replayed: this key's first answer; nothing written)" if new.replayed else ""
    click.echo(
        f"{new.total_tasks} task(s), {new.invalid_tasks} invalid, "
        f"{new.reserved_credits} credits reserved{replayed}",
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


@batch.command("list")
@click.option(
    "--status", "status_", type=click.Choice([s.value for s in BatchStatus]), default=None
)
@click.option("--user", default=None, help="Only this user's batches.")
@click.option("--limit", type=click.IntRange(min=1), default=50, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON list.")
def list_(status_: str | None, user: str | None, limit: int, as_json: bool) -> None:
    """List batches, newest first, with their counts per task status and credits."""
    views = list_batches(
        context.database(context.settings()), status=status_, user_id=user, limit=limit
    )
    if as_json:
        click.echo(json.dumps(batch_list_json(views), ensure_ascii=False))
    else:
        click.echo(batch_list_table(views))


@batch.command("cancel")
@click.argument("batch_id")
def cancel(batch_id: str) -> None:
    """Cancel a batch: tasks not yet sent fail and are refunded now; tasks at the API finish
    and settle as usual; nothing of the batch is submitted again."""
    settings = context.settings()
    done = cancel_batch(context.database(settings), batch_id, lease_s=settings.claim_lease_s)
    if done.unchanged is not None:
        click.echo(f"batch {batch_id}: nothing to cancel, {done.unchanged}")
        return
    after = "settled" if done.settled else f"{done.still_running} task(s) at the API finish first"
    click.echo(
        f"batch {batch_id} cancelled: {done.cancelled_tasks} unsent task(s) failed, "
        f"{done.refunded_credits} credits refunded; {after}"
    )
