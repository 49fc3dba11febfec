"""``simulator``: the local Grsai-compatible API."""

from __future__ import annotations

import click


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8787, show_default=True, type=click.IntRange(0, 65535))
@click.option("--api-key", default=None, help="Refuse requests without this key (HTTP 401).")
@click.option("--seed", default=None, type=int, help="Seed of the random outcome mix.")
@click.option(
    "--generation-s",
    default=(1.0, 3.0),
    nargs=2,
    type=float,
    show_default=True,
    help="Shortest and longest generation time, in seconds.",
)
def simulator(
    host: str, port: int, api_key: str | None, seed: int | None, generation_s: tuple[float, float]
) -> None:
    """Serve a Grsai-compatible API with latency, progress, a failure mix and fault injection.

    Point GRSAI_BASE_URL at it. Faults: POST /_sim/faults; counters: GET /_sim/stats.
    """
    from grsai_pipeline.dev.simulator import SimulatorConfig, serve

    config = SimulatorConfig(api_key=api_key, seed=seed, generation_s=generation_s)
    click.echo(f"Grsai simulator on http://{host}:{port} (Ctrl-C to stop)", err=True)
    serve(host, port, config)
