"""What every step needs: the database, the settings, who is running, and the API client."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from sqlalchemy.engine import Engine

from grsai_pipeline.config import Settings
from grsai_pipeline.domain.callbacks import callback_url
from grsai_pipeline.grsai.client import GrsaiClient, RetrySettings
from grsai_pipeline.grsai.wire import POLLING_MODE_WEBHOOK


@dataclass(frozen=True)
class StepContext:
    """``runner_id`` names the claims this process takes (the Dagster run id under Dagster)."""

    engine: Engine
    settings: Settings
    runner_id: str
    log: logging.Logger | logging.LoggerAdapter[logging.Logger] = field(
        default_factory=lambda: logging.getLogger("grsai_pipeline")
    )

    def open_client(self) -> GrsaiClient:
        """A client for one event loop; raises SettingsError when GRSAI_API_KEY is missing."""
        s = self.settings
        return GrsaiClient(
            s.base_url,
            s.require_api_key(),
            max_concurrency=s.max_concurrency,
            timeout_s=s.http_timeout_s,
            retry=RetrySettings(s.retry_budget_s, s.backoff_base_s, s.backoff_max_s),
        )

    def webhook_for(self, task_id: str) -> str:
        """``"-1"`` in polling mode; the signed callback URL when APP_URL is set."""
        base = self.settings.callback_base_url
        if base is None or self.settings.webhook_secret is None:
            return POLLING_MODE_WEBHOOK
        return callback_url(base, self.settings.webhook_secret.get_secret_value(), task_id)
