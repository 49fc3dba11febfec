"""``api serve`` and ``api token create|list|revoke``: the HTTP API of SPEC 9."""

from __future__ import annotations

import click

from grsai_pipeline.cli import context


@click.group()
def api() -> None:
    """The HTTP API for web apps, and its bearer tokens."""


@api.command("serve")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8790, show_default=True, type=click.IntRange(0, 65535))
def serve_command(host: str, port: int) -> None:
    """Serve the JSON API of SPEC 9 (GET /openapi.json describes it); every route but
    /healthz wants `Authorization: Bearer <token>` (`api token create`), but a video opens by a
    signed link too (GRSAI_LINK_SECRET)."""
    from grsai_pipeline.api.app import serve

    settings = context.settings()
    engine = context.database(settings)
    click.echo(f"API on http://{host}:{port} (Ctrl-C to stop)", err=True)
    secret = settings.link_secret.get_secret_value() if settings.link_secret else None
    serve(engine, settings.price_table, settings.claim_lease_s, host, port, secret)


@api.group()
def token() -> None:
    """Bearer tokens: the database keeps only their SHA-256."""


@token.command("create")
@click.argument("name")
def create(name: str) -> None:
    """Make a token named NAME and print it, once: it cannot be shown again."""
    from grsai_pipeline.store.tokens import create_token

    made = create_token(context.database(context.settings()), name)
    click.echo(made)
    click.echo(f"token {name!r} made; keep it secret, it is not shown again", err=True)


@token.command("list")
def list_() -> None:
    """Every token's name, when it was made, and when it was revoked."""
    from grsai_pipeline.store.tokens import list_tokens

    tokens = list_tokens(context.database(context.settings()))
    if not tokens:
        click.echo("(no tokens)")
    for made in tokens:
        revoked = f"revoked {made.revoked_at.isoformat()}" if made.revoked_at else "live"
        click.echo(f"{made.name}\tcreated {made.created_at.isoformat()}\t{revoked}")


@token.command("revoke")
@click.argument("name")
def revoke(name: str) -> None:
    """Revoke the token named NAME; requests with it get 401 from the next one on."""
    from grsai_pipeline.store.tokens import revoke_token

    done = revoke_token(context.database(context.settings()), name)
    assert done.revoked_at is not None
    click.echo(f"token {name!r} revoked at {done.revoked_at.isoformat()}")
