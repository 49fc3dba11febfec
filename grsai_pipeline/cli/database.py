"""``db init`` and ``db verify``."""

from __future__ import annotations

import click
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

from grsai_pipeline.cli import context
from grsai_pipeline.errors import DatabaseNotReady, LedgerMismatch
from grsai_pipeline.store.audit import verify_ledger
from grsai_pipeline.store.db import get_engine
from grsai_pipeline.store.migrate import current_revision, upgrade_schema


@click.group()
def db() -> None:
    """The application database."""


@db.command("init")
def init() -> None:
    """Create the schema, or upgrade it in place; safe to run again."""
    settings = context.settings()
    engine = get_engine(settings.database_url)
    try:
        before = current_revision(engine)
        upgrade_schema(engine)
        after = current_revision(engine)
    except SQLAlchemyError as exc:
        raise DatabaseNotReady(f"db init failed: {context.database_error(exc)}") from None
    where = make_url(settings.database_url).render_as_string(hide_password=True)
    change = "already up to date" if before == after else f"upgraded from {before or 'empty'}"
    click.echo(f"{where}: schema at revision {after} ({change})")


@db.command("verify")
def verify() -> None:
    """Recompute every balance and every batch's credit columns from the ledger; exit 1
    naming each difference."""
    problems = verify_ledger(context.database(context.settings()))
    for problem in problems:
        click.echo(problem)
    if problems:
        raise LedgerMismatch(problems)
    click.echo("ledger verified: every balance, held amount and batch credit column matches")
