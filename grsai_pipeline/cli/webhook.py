"""``webhook serve``: the callback receiver of SPEC 5."""

from __future__ import annotations

import click

from grsai_pipeline.cli import context
from grsai_pipeline.domain.callbacks import CALLBACK_PATH


@click.group()
def webhook() -> None:
    """The receiver of Grsai's callbacks (when APP_URL is set)."""


@webhook.command("serve")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8788, show_default=True, type=click.IntRange(0, 65535))
def serve_command(host: str, port: int) -> None:
    """Serve POST /api/video/callback: verify each callback's token, apply it like a poll.

    Put it behind APP_URL (Grsai calls APP_URL + /api/video/callback); polling goes on
    beside it, so a callback that never arrives only delays its task.
    """
    from grsai_pipeline.webhook.app import serve

    settings = context.settings()
    secret = settings.require_webhook_secret()
    engine = context.database(settings)
    where = f"http://{host}:{port}{CALLBACK_PATH}"
    click.echo(f"callback receiver on {where} (Ctrl-C to stop)", err=True)
    serve(engine, secret, settings.retry_policy, host, port)
