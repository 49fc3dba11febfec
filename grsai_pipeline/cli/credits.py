"""``credits grant`` and ``credits show``."""

from __future__ import annotations

import json

import click

from grsai_pipeline.cli.errors import BadInput, database_or_exit, settings_or_exit
from grsai_pipeline.store.accounts import Account, get_account, grant_credits
from grsai_pipeline.store.errors import UnknownAccount


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
        raise BadInput(f"AMOUNT must be a positive integer, got {amount}")
    if not user.strip():
        raise BadInput("USER must not be empty")
    engine = database_or_exit(settings_or_exit())
    try:
        account = grant_credits(engine, user, amount)
    except ValueError as exc:
        raise BadInput(str(exc)) from None
    click.echo(f"granted {amount} credits to {user}: {_describe(account)}")


@credits.command("show")
@click.argument("user")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def show(user: str, as_json: bool) -> None:
    """Show USER's spendable balance and the credits held for unsettled work."""
    engine = database_or_exit(settings_or_exit())
    try:
        account = get_account(engine, user)
    except UnknownAccount as exc:
        raise BadInput(str(exc)) from None
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
