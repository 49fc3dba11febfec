"""``db init``."""

from __future__ import annotations

import click
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

from grsai_pipeline.cli import context
from grsai_pipeline.errors import DatabaseNotReady
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
