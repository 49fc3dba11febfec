"""Settings: every environment variable of SPEC section 6 (and a few of our own), validated once.

Values come from the environment and an optional ``.env`` file in the working directory. A
missing or invalid value raises :class:`SettingsError`, whose one-line message names the
variable. Secrets are ``SecretStr`` so that no repr, log or exception shows them.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict
from pydantic_settings import SettingsError as SourceParseError
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from grsai_pipeline.domain.links import VideoLinks
from grsai_pipeline.domain.pricing import PriceTable
from grsai_pipeline.domain.states import RetryPolicy
from grsai_pipeline.errors import SettingsError

DEFAULT_BASE_URL = "https://grsaiapi.com"
DEFAULT_DATABASE_URL = "sqlite:///grsai.db"
DEFAULT_ARCHIVE_URL = "./videos"
DEFAULT_LINK_TTL_S = 7 * 24 * 3600
MIN_LINK_SECRET_CHARS = 16


class Settings(BaseSettings):
    """The process's configuration. Field aliases are the environment variable names."""

    model_config = SettingsConfigDict(
        env_file=".env", extra="ignore", populate_by_name=True, frozen=True
    )

    api_key: SecretStr | None = Field(None, alias="GRSAI_API_KEY")
    base_url: str = Field(DEFAULT_BASE_URL, alias="GRSAI_BASE_URL")
    database_url: str = Field(DEFAULT_DATABASE_URL, alias="GRSAI_DATABASE_URL")
    app_url: str | None = Field(None, alias="APP_URL")
    next_public_app_url: str | None = Field(None, alias="NEXT_PUBLIC_APP_URL")
    webhook_secret: SecretStr | None = Field(None, alias="GRSAI_WEBHOOK_SECRET")
    max_task_retries: int = Field(2, ge=0, le=20, alias="MAX_TASK_RETRIES")
    # Ours (issue 24): how many times one task may be retried by backfill, each a reservation.
    max_backfill_retries: int = Field(3, ge=0, le=100, alias="GRSAI_MAX_BACKFILL_RETRIES")
    max_concurrency: int = Field(10, ge=1, le=1000, alias="GRSAI_MAX_CONCURRENCY")
    poll_interval_s: float = Field(5.0, gt=0, le=3600, alias="GRSAI_POLL_INTERVAL_S")
    poll_budget_s: float = Field(300.0, ge=0, alias="GRSAI_POLL_BUDGET_S")
    # Ours (issue 25): the longest wait between two polls of one task; polls come sooner as
    # its video is likely ready (domain/pacing.py). At (or under) GRSAI_POLL_INTERVAL_S: fixed
    # polling at the interval, which stays the shortest spacing whatever this says.
    poll_max_gap_s: float = Field(60.0, gt=0, le=3600, alias="GRSAI_POLL_MAX_GAP_S")
    # SPEC 8: where archived videos go, any fsspec URL (a local folder by default).
    archive_url: str = Field(DEFAULT_ARCHIVE_URL, alias="GRSAI_ARCHIVE_URL")
    dagster_home: str | None = Field(None, alias="DAGSTER_HOME")
    dagster_pg_url: str | None = Field(None, alias="DAGSTER_PG_URL")

    # Ours, beyond SPEC 6: the bounds of every wait, so that tests and operators can tune them.
    http_timeout_s: float = Field(30.0, gt=0, alias="GRSAI_HTTP_TIMEOUT_S")
    retry_budget_s: float = Field(60.0, ge=0, alias="GRSAI_RETRY_BUDGET_S")
    backoff_base_s: float = Field(0.5, gt=0, alias="GRSAI_BACKOFF_BASE_S")
    backoff_max_s: float = Field(10.0, gt=0, alias="GRSAI_BACKOFF_MAX_S")
    not_found_grace_s: float = Field(120.0, ge=0, alias="GRSAI_NOT_FOUND_GRACE_S")
    task_timeout_s: float = Field(3600.0, gt=0, alias="GRSAI_TASK_TIMEOUT_S")
    claim_lease_s: float = Field(30.0, gt=0, alias="GRSAI_CLAIM_LEASE_S")
    # Ours (issue 26): how many re-polling runs the schedule keeps at work at once, on whatever
    # machines the run launcher picks; they share the open tasks task by task (store/polls.py).
    # Dagster's run coordinator must allow one more (the handover): the grsai/repoll tag limit.
    repoll_runs: int = Field(1, ge=1, le=64, alias="GRSAI_REPOLL_RUNS")
    prices: dict[str, int] = Field(default_factory=dict, alias="GRSAI_PRICES")
    archive_concurrency: int = Field(4, ge=1, le=64, alias="GRSAI_ARCHIVE_CONCURRENCY")
    # How long a batch's own run copies its videos after settling (0: the re-polling run does).
    archive_budget_s: float = Field(120.0, ge=0, alias="GRSAI_ARCHIVE_BUDGET_S")
    # Signed links to archived videos through the HTTP API (GET /v1/videos/{task_id}): the key
    # that signs them, the API's address as a browser reaches it, and how long a link lives.
    link_secret: SecretStr | None = Field(None, alias="GRSAI_LINK_SECRET")
    api_public_url: str | None = Field(None, alias="GRSAI_API_PUBLIC_URL")
    link_ttl_s: int = Field(DEFAULT_LINK_TTL_S, ge=60, le=366 * 24 * 3600, alias="GRSAI_LINK_TTL_S")

    @field_validator("base_url")
    @classmethod
    def _base_url_is_http(cls, value: str) -> str:
        return _http_url(value).rstrip("/")

    @field_validator("app_url", "next_public_app_url")
    @classmethod
    def _app_url_is_http(cls, value: str | None) -> str | None:
        return None if not value else _http_url(value).rstrip("/")

    @field_validator("api_public_url")
    @classmethod
    def _api_public_url_is_http(cls, value: str | None) -> str | None:
        return None if not value else _http_url(value).rstrip("/")

    @field_validator("link_secret")
    @classmethod
    def _link_secret_is_long(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None or not value.get_secret_value():
            return None
        if len(value.get_secret_value()) < MIN_LINK_SECRET_CHARS:
            raise ValueError(f"must be a long random string, {MIN_LINK_SECRET_CHARS}+ characters")
        return value

    @field_validator("archive_url")
    @classmethod
    def _archive_url_is_set(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must be a folder or an fsspec URL such as s3://bucket/prefix")
        return value.strip()

    @field_validator("database_url")
    @classmethod
    def _database_url_is_known(cls, value: str) -> str:
        return normalise_database_url(value)

    @field_validator("dagster_pg_url")
    @classmethod
    def _dagster_pg_url_has_driver(cls, value: str | None) -> str | None:
        if value and not value.startswith("postgresql+psycopg2://"):
            raise ValueError(
                "must start with postgresql+psycopg2:// (dagster-postgres uses psycopg2)"
            )
        return value or None

    @field_validator("prices")
    @classmethod
    def _prices_are_known(cls, value: dict[str, int]) -> dict[str, int]:
        PriceTable(value)  # raises ValueError naming the bad key or price
        return value

    @model_validator(mode="after")
    def _callbacks_are_signed(self) -> Settings:
        if self.callback_base_url and self.webhook_secret is None:
            raise ValueError(
                "GRSAI_WEBHOOK_SECRET must be set when APP_URL or NEXT_PUBLIC_APP_URL is set"
                " (callbacks carry a token signed with it)"
            )
        return self

    @property
    def price_table(self) -> PriceTable:
        return PriceTable(self.prices)

    @property
    def retry_policy(self) -> RetryPolicy:
        return RetryPolicy(
            max_task_retries=self.max_task_retries,
            not_found_grace_s=self.not_found_grace_s,
            task_timeout_s=self.task_timeout_s,
            max_backfill_retries=self.max_backfill_retries,
        )

    @property
    def callback_base_url(self) -> str | None:
        """Where Grsai should call back; None means polling mode (``webHook: "-1"``)."""
        return self.app_url or self.next_public_app_url

    @property
    def video_links(self) -> VideoLinks | None:
        """Signed links to archived videos, when GRSAI_API_PUBLIC_URL and GRSAI_LINK_SECRET
        are both set; None: archived copies are linked by their store URL."""
        if self.api_public_url is None or self.link_secret is None:
            return None
        return VideoLinks(self.api_public_url, self.link_secret.get_secret_value(), self.link_ttl_s)

    def require_webhook_secret(self) -> str:
        if self.webhook_secret is None or not self.webhook_secret.get_secret_value().strip():
            raise SettingsError("GRSAI_WEBHOOK_SECRET is not set: callbacks are verified with it")
        return self.webhook_secret.get_secret_value()

    @property
    def has_api_key(self) -> bool:
        """Whether GRSAI_API_KEY is set to something other than blanks."""
        return self.api_key is not None and bool(self.api_key.get_secret_value().strip())

    def require_api_key(self) -> SecretStr:
        if self.api_key is None or not self.has_api_key:
            raise SettingsError("GRSAI_API_KEY is not set: it is needed to call the Grsai API")
        return self.api_key


def _http_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError("must be an http(s) URL")
    return value


def normalise_database_url(value: str) -> str:
    """Validate a SQLAlchemy URL; a bare ``postgresql://`` gets the psycopg2 driver we ship."""
    try:
        url = make_url(value)
    except ArgumentError:
        raise ValueError("must be a SQLAlchemy database URL such as sqlite:///grsai.db") from None
    if url.drivername in ("postgresql", "postgres"):
        url = url.set(drivername="postgresql+psycopg2")
    if url.drivername not in ("sqlite", "sqlite+pysqlite", "postgresql+psycopg2"):
        raise ValueError("must be a sqlite:/// or postgresql+psycopg2:// URL")
    return url.render_as_string(hide_password=False)


def load_settings(**overrides: Any) -> Settings:
    """Read settings from the environment; raise :class:`SettingsError` naming a bad one."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        raise SettingsError(describe_validation_error(exc)) from None
    except SourceParseError as exc:
        # pydantic-settings names the Python field; users know the variable.
        field = re.search(r'field "(\w+)"', str(exc))
        name = Settings.model_fields[field.group(1)].alias if field else "settings"
        raise SettingsError(f"invalid setting {name}: not valid JSON") from None


def describe_validation_error(exc: ValidationError) -> str:
    error = exc.errors()[0]
    name = ".".join(str(part) for part in error["loc"])
    message = str(error["msg"]).removeprefix("Value error, ")
    more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
    return f"invalid setting {name}: {message}{more}" if name else f"invalid settings: {message}"
