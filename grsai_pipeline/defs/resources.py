"""Resources: the application database and the Grsai API, configured once per run.

Both read SPEC 6's settings (the environment and an optional ``.env``) the first time a run,
sensor or schedule uses them, and keep them; their typed fields override a setting for this
code location only. The API key is not a field on purpose: it stays in the environment, so it
never enters a run's config, the UI or the event log.
"""

# No "from __future__ import annotations": Dagster reads these hints at definition time.
import dagster as dg
from pydantic import Field, PrivateAttr
from sqlalchemy.engine import Engine

from grsai_pipeline.config import Settings, load_settings
from grsai_pipeline.errors import SettingsError
from grsai_pipeline.store.db import get_engine


def _read_settings(**overrides: object) -> Settings:
    try:
        return load_settings(**{k: v for k, v in overrides.items() if v is not None})
    except SettingsError as exc:
        raise dg.Failure(description=str(exc), allow_retries=False) from None


class AppDatabase(dg.ConfigurableResource):
    """The application database: tasks, batches and the ledger."""

    url: str | None = Field(
        default=None,
        description="SQLAlchemy URL; unset: GRSAI_DATABASE_URL (default sqlite:///grsai.db).",
    )
    _engine: Engine | None = PrivateAttr(default=None)

    def engine(self) -> Engine:
        if self._engine is None:
            self._engine = get_engine(_read_settings(GRSAI_DATABASE_URL=self.url).database_url)
        return self._engine


class GrsaiApi(dg.ConfigurableResource):
    """The Grsai API and the engine's limits (GRSAI_BASE_URL, GRSAI_API_KEY, ...)."""

    base_url: str | None = Field(default=None, description="Overrides GRSAI_BASE_URL.")
    max_concurrency: int | None = Field(
        default=None, description="Overrides GRSAI_MAX_CONCURRENCY: requests on the wire at once."
    )
    poll_interval_s: float | None = Field(
        default=None, description="Overrides GRSAI_POLL_INTERVAL_S."
    )
    poll_budget_s: float | None = Field(default=None, description="Overrides GRSAI_POLL_BUDGET_S.")
    _settings: Settings | None = PrivateAttr(default=None)

    def settings(self) -> Settings:
        """Every setting, read once; a missing or invalid one fails the run by name."""
        if self._settings is None:
            self._settings = _read_settings(
                GRSAI_BASE_URL=self.base_url,
                GRSAI_MAX_CONCURRENCY=self.max_concurrency,
                GRSAI_POLL_INTERVAL_S=self.poll_interval_s,
                GRSAI_POLL_BUDGET_S=self.poll_budget_s,
            )
        return self._settings
