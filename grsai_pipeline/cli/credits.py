"""``credits grant`` and ``credits show``."""

from __future__ import annotations

import json

import click

from grsai_pipeline.cli import context
from grsai_pipeline.errors import InvalidInput
from grsai_pipeline.store.accounts import MAX_BALANCE, Account, get_account, grant_credits


@click.group()
def credits() -> None:
    """Users' credit accounts."""


# Parse "-5" as an AMOUNT (refused below, by name), not as an unknown option.
@credits.command("grant", context_settings={"ignore_unknown_options": True})
@click.argument("user")
@click.argument("amount", type=int)
def grant(user: str, amount: int) -> None:
    """Add AMOUNT spendable credits to USER's account."""
    if amount <= 0:
        raise InvalidInput("AMOUNT", f"must be a positive integer, got {amount}")
    if amount > MAX_BALANCE:
        raise InvalidInput("AMOUNT", f"must be at most {MAX_BALANCE}, got {amount}")
    if not user.strip():
        raise InvalidInput("USER", "must not be empty")
    account = grant_credits(context.database(context.settings()), user, amount)
    click.echo(f"granted {amount} credits to {user}: {_describe(account)}")


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


def _describe(account: Account) -> str:
    return f"balance {account.balance}, held {account.held}"
