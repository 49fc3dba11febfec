"""``credits grant``, ``credits show`` and ``credits ledger``."""

from __future__ import annotations

import json

import click

from grsai_pipeline.api.models import CreditsOut
from grsai_pipeline.cli import context
from grsai_pipeline.cli.batches import IDEMPOTENCY_HELP
from grsai_pipeline.cli.views import ledger_json, ledger_table
from grsai_pipeline.errors import InvalidInput
from grsai_pipeline.store.accounts import (
    MAX_BALANCE,
    Account,
    account_ledger,
    get_account,
    grant_credits,
)


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
        click.echo(json.dumps(CreditsOut.of(account).model_dump(mode="json")))
    else:
        click.echo(f"{user}: {_describe(account)}")


@credits.command("ledger")
@click.argument("user")
@click.option("--batch", "batch_id", default=None, help="Only the entries of this batch.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON list.")
def ledger(user: str, batch_id: str | None, as_json: bool) -> None:
    """USER's ledger, newest last: each entry, its transaction, and the balance after it."""
    lines = account_ledger(context.database(context.settings()), user, batch_id)
    if as_json:
        click.echo(json.dumps(ledger_json(lines)))
    else:
        click.echo(ledger_table(lines))


def _describe(account: Account) -> str:
    return f"balance {account.balance}, held {account.held}"
