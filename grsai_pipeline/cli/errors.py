"""Errors with the exit codes of SPEC 6, and the helpers every command uses to reach the
settings and the database."""

from __future__ import annotations

from pathlib import Path

import click
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import SQLAlchemyError

from grsai_pipeline.config import Settings, SettingsError, load_settings
from grsai_pipeline.store.db import get_engine
from grsai_pipeline.store.migrate import HEAD_REVISION, current_revision


class BadInput(click.ClickException):
    """Bad usage or bad input: exit code 2."""

    exit_code = 2


class Failed(click.ClickException):
    """The command could not do its work: exit code 1."""

    exit_code = 1


def one_line(text: str) -> str:
    first = text.strip().splitlines()[0] if text.strip() else "unknown error"
    return first.strip()


def database_error(exc: SQLAlchemyError) -> str:
    """The driver's own first line (SQLAlchemy's wrapper adds SQL and links)."""
    return one_line(str(getattr(exc, "orig", None) or exc))


def settings_or_exit() -> Settings:
    try:
        return load_settings()
    except SettingsError as exc:
        raise BadInput(str(exc)) from None


def database_or_exit(settings: Settings) -> Engine:
    """The application database, at the schema this version expects."""
    url = make_url(settings.database_url)
    if url.get_backend_name() == "sqlite" and url.database and not Path(url.database).exists():
        # Connecting would create an empty file; say what to do instead.
        raise Failed(f"no database at {url.database}: run `grsai-pipeline db init`")
    engine = get_engine(settings.database_url)
    try:
        revision = current_revision(engine)
    except SQLAlchemyError as exc:
        raise Failed(
            f"cannot open the database GRSAI_DATABASE_URL: {database_error(exc)}"
        ) from None
    if revision != HEAD_REVISION:
        raise Failed(
            f"the database schema is at revision {revision or 'none'}, this version needs "
            f"{HEAD_REVISION}: run `grsai-pipeline db init`"
        )
    return engine
