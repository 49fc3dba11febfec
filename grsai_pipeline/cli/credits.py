"""``credits grant``, ``credits show`` and ``credits ledger``."""

from __future__ import annotations

import json

import click

from grsai_pipeline.cli import context
from grsai_pipeline.cli.batches import IDEMPOTENCY_HELP
from grsai_pipeline.cli.views import ledger_json, ledger_table
from grsai_pipeline.errors import InvalidInput
from grsai_pipeline.store.accounts import MAX_BALANCE, Account, get_account, grant_credits
from grsai_pipeline.store.batches import get_batch
from grsai_pipeline.store.db import reading
from grsai_pipeline.store.ledger import list_entries, running_ledger


@click.group()
def credits() -> None:
    """Users' credit accounts."""


# Parse "-5" as an AMOUNT (refused below, by name), not as an unknown option.
@credits.command("grant", context_settings={"ignore_unknown_options": True})
@click.argument("user")
@click.argument("amount", type=int)
@click.option("--idempotency-key", default=None, metavar="KEY", help=IDEMPOTENCY_HELP)
def grant(user: str, amount: int, idempotency_key: str | None) -> None:
    """Add AMOUNT spendable credits to USER's account."""
    if amount <= 0:
        raise InvalidInput("AMOUNT", f"must be a positive integer, got {amount}")
    if amount > MAX_BALANCE:
        raise InvalidInput("AMOUNT", f"must be at most {MAX_BALANCE}, got {amount}")
    if not user.strip():
        raise InvalidInput("USER", "must not be empty")
    database = context.database(context.settings())
    account = grant_credits(database, user, amount, idempotency_key=idempotency_key)
    click.echo(f"granted {amount} credits to {user}: {_describe(account)}")
    if account.replayed:
        click.echo("replayed: this key's first answer; nothing written", err=True)


@credits.command("show")
@click.argument("user")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def show(user: str, as_json: bool) -> None:
    """Show USER's spendable balance and the credits held for unsettled work."""
    account = get_account(context.database(context.settings()), user)
    if as_json:
        click.echo(
            json.dumps(
                {
                    "user_id": account.user_id,
                    "balance": account.balance,
                    "held": account.held,
                    "updated_at": account.updated_at.isoformat(),
                }
            )
        )
    else:
        click.echo(f"{user}: {_describe(account)}")


@credits.command("ledger")
@click.argument("user")
@click.option("--batch", "batch_id", default=None, help="Only the entries of this batch.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON list.")
def ledger(user: str, batch_id: str | None, as_json: bool) -> None:
    """USER's ledger, newest last: each entry, its transaction, and the balance after it."""
    database = context.database(context.settings())
    get_account(database, user)  # UnknownAccount, exit 2, for a user with no account
    if batch_id is not None and get_batch(database, batch_id, with_tasks=False).user_id != user:
        raise InvalidInput("--batch", f"{batch_id} is a batch of another user")
    with reading(database) as conn:
        # The whole ledger, so that the running balance is the account's, then the batch's part.
        lines = running_ledger(list_entries(conn, user_id=user))
    if batch_id is not None:
        lines = [line for line in lines if line.entry.batch_job_id == batch_id]
    if as_json:
        click.echo(json.dumps(ledger_json(lines)))
    else:
        click.echo(ledger_table(lines))


def _describe(account: Account) -> str:
    return f"balance {account.balance}, held {account.held}"
