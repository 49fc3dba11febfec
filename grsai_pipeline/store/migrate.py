"""``db init``: create or upgrade the schema to the newest revision, idempotently.

Every command checks the schema's revision before it touches the database; that check reads
the version table with plain SQL against :data:`HEAD_REVISION`, so that commands which do not
migrate never pay for importing alembic and reading its scripts.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Final

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from grsai_pipeline.errors import DatabaseNotReady

if TYPE_CHECKING:
    from alembic.config import Config

MIGRATIONS = Path(__file__).with_name("migrations")
# Not alembic's default name: Dagster's own PostgreSQL storage keeps an "alembic_version" table,
# and the two may share one database.
VERSION_TABLE: Final = "grsai_schema_version"
# The newest revision in migrations/versions (a test checks that alembic agrees).
HEAD_REVISION: Final = "0011"


def upgrade_schema(engine: Engine, revision: str = "head") -> None:
    """Bring the database to ``revision`` (default: newest), keeping every row."""
    from alembic import command

    config = _alembic_config()
    with engine.begin() as conn:
        config.attributes["connection"] = conn
        command.upgrade(config, revision)


def current_revision(engine: Engine) -> str | None:
    """The schema's revision, or None for a database that was never initialised."""
    with engine.connect() as conn:
        if not sa.inspect(conn).has_table(VERSION_TABLE):
            return None
        table = sa.table(VERSION_TABLE, sa.column("version_num"))
        version = conn.execute(sa.select(table.c.version_num)).scalar()
        return str(version) if version is not None else None


def require_head(revision: str | None) -> None:
    """DatabaseNotReady, saying what to run, unless ``revision`` is the one this version needs."""
    if revision != HEAD_REVISION:
        raise DatabaseNotReady(
            f"the database schema is at revision {revision or 'none'}, this version needs "
            f"{HEAD_REVISION}: run `grsai-pipeline db init`"
        )


def alembic_head_revision() -> str:
    """The head as alembic reads it from the scripts."""
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(_alembic_config()).get_current_head()
    assert head is not None
    return head


def _alembic_config() -> Config:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    return config
