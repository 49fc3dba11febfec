"""Alembic environment: runs on the connection that ``grsai-pipeline db init`` hands it."""

from __future__ import annotations

from alembic import context

from grsai_pipeline.store.migrate import VERSION_TABLE
from grsai_pipeline.store.schema import metadata

connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=metadata,
    render_as_batch=connection.dialect.name == "sqlite",
    version_table=VERSION_TABLE,
)
with context.begin_transaction():
    context.run_migrations()
