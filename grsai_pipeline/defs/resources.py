"""Resources for the application database and the Grsai API.

Neither holds a value in its Dagster config: both read :class:`~grsai_pipeline.config.Settings`
from the environment when a run, sensor or schedule uses them, so the API key never enters the
run config, the UI or the event log.
"""

from __future__ import annotations

import dagster as dg
from sqlalchemy.engine import Engine

from grsai_pipeline.config import Settings, SettingsError, load_settings
from grsai_pipeline.store.db import get_engine


def _settings() -> Settings:
    try:
        return load_settings()
    except SettingsError as exc:
        raise dg.Failure(description=str(exc), allow_retries=False) from None


class AppDatabase(dg.ConfigurableResource):
    """The application database named by ``GRSAI_DATABASE_URL``."""

    def engine(self) -> Engine:
        return get_engine(_settings().database_url)


class GrsaiApi(dg.ConfigurableResource):
    """The Grsai API settings (``GRSAI_BASE_URL``, ``GRSAI_API_KEY``, limits, budgets)."""

    def settings(self) -> Settings:
        return _settings()
