"""What every command reaches first: the settings and the application database, checked."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import SQLAlchemyError

from grsai_pipeline.cli.exits import one_line
from grsai_pipeline.config import Settings, load_settings
from grsai_pipeline.errors import DatabaseNotReady
from grsai_pipeline.store.db import get_engine
from grsai_pipeline.store.migrate import current_revision, require_head


def settings() -> Settings:
    """The settings, or SettingsError naming the bad one."""
    return load_settings()


def database(settings: Settings) -> Engine:
    """The application database, at the schema this version expects."""
    url = make_url(settings.database_url)
    if url.get_backend_name() == "sqlite" and url.database and not Path(url.database).exists():
        # Connecting would create an empty file; say what to do instead.
        raise DatabaseNotReady(f"no database at {url.database}: run `grsai-pipeline db init`")
    engine = get_engine(settings.database_url)
    try:
        revision = current_revision(engine)
    except SQLAlchemyError as exc:
        raise DatabaseNotReady(
            f"cannot open the database GRSAI_DATABASE_URL: {database_error(exc)}"
        ) from None
    require_head(revision)
    return engine


def database_error(exc: SQLAlchemyError) -> str:
    """The driver's own first line (SQLAlchemy's wrapper adds SQL and links)."""
    return one_line(str(getattr(exc, "orig", None) or exc))
