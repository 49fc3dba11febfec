"""The engine's work as the adapters (Dagster, the CLI) ask for it: submit one batch, follow
one batch to its end, or follow every open batch.

Each opens a client and a heartbeat for its runner, runs the engine in an event loop of its
own, and closes them again. Nothing here knows Dagster.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from types import TracebackType

import uvloop
from sqlalchemy.engine import Engine as Database

from grsai_pipeline.config import Settings
from grsai_pipeline.domain.callbacks import callback_url
from grsai_pipeline.engine.loop import Engine, EngineSettings, Until
from grsai_pipeline.engine.report import EngineReport
from grsai_pipeline.engine.scope import OneBatch, OpenBatches, Scope
from grsai_pipeline.grsai.client import GrsaiClient, RetrySettings
from grsai_pipeline.grsai.wire import POLLING_MODE_WEBHOOK
from grsai_pipeline.store.runners import Heartbeat


def open_client(settings: Settings) -> GrsaiClient:
    """A client for the current event loop; raises SettingsError when GRSAI_API_KEY is missing."""
    return GrsaiClient(
        settings.base_url,
        settings.require_api_key(),
        max_concurrency=settings.max_concurrency,
        timeout_s=settings.http_timeout_s,
        retry=RetrySettings(
            settings.retry_budget_s, settings.backoff_base_s, settings.backoff_max_s
        ),
    )


def engine_settings(settings: Settings) -> EngineSettings:
    return EngineSettings(
        max_concurrency=settings.max_concurrency,
        poll_interval_s=settings.poll_interval_s,
        claim_lease_s=settings.claim_lease_s,
        policy=settings.retry_policy,
        webhook_for=_webhook_maker(settings),
        prices=settings.price_table,
        poll_max_gap_s=settings.poll_max_gap_s,
        callbacks=settings.callback_base_url is not None,
    )


def _webhook_maker(settings: Settings) -> Callable[[str], str]:
    """``"-1"`` in polling mode; the signed callback URL of each task when APP_URL is set."""
    base, secret = settings.callback_base_url, settings.webhook_secret
    if base is None or secret is None:
        return lambda task_id: POLLING_MODE_WEBHOOK
    key = secret.get_secret_value()
    return lambda task_id: callback_url(base, key, task_id)


def batch_worker(db: Database, settings: Settings, runner_id: str, batch_id: str) -> Worker:
    """A worker over one batch (a run of its own): ``run`` it to submit, then to follow."""
    return Worker(db, settings, runner_id, OneBatch(batch_id), batch_id)


@contextmanager
def open_batches_worker(db: Database, settings: Settings, runner_id: str) -> Iterator[Worker]:
    """A worker over every open batch (sharing their tasks with whatever other engines are
    live); ``worker.run`` it in periods, settling in between."""
    scope = OpenBatches(settings.claim_lease_s, settings.repoll_runs)
    with Worker(db, settings, runner_id, scope, None) as worker:
        yield worker


class Worker:
    """An engine with its client, heartbeat and event loop, for one or several runs."""

    def __init__(
        self,
        db: Database,
        settings: Settings,
        runner_id: str,
        scope: Scope,
        batch_id: str | None,
    ) -> None:
        self.db = db
        self._settings = settings
        self._scope = scope
        self._heartbeat = Heartbeat(db, runner_id, settings.claim_lease_s, batch_id)
        self._stack = ExitStack()
        # uvloop: the same asyncio, with a cheaper event loop (CPU per request, issue 9).
        self._runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
        self._engine: Engine | None = None

    def __enter__(self) -> Worker:
        client = open_client(self._settings)  # before anything else: a missing key stops here
        self._stack.enter_context(self._runner)
        self._stack.enter_context(self._heartbeat)
        self._stack.callback(lambda: self._runner.run(client.aclose()))
        self._engine = Engine(
            self.db,
            client,
            self._heartbeat,
            self._scope,
            engine_settings(self._settings),
        )
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stack.close()

    def run(self, until: Until, budget_s: float) -> EngineReport:
        assert self._engine is not None, "use the worker in a with block"
        return self._runner.run(self._engine.run(until, budget_s))
