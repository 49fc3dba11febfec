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
@click.option(
    "--realistic",
    is_flag=True,
    help="Generation times per model with a long tail (Sora-2 mostly 2-5 minutes, Veo up to 16)"
    " and noisy, sometimes stuck or coarse progress, instead of --generation-s.",
)
@click.option(
    "--time-scale",
    default=1.0,
    type=click.FloatRange(min=0, min_open=True),
    show_default=True,
    help="Divide every generation time by this (10: a 3-minute video takes 18 s).",
)
def simulator(
    host: str,
    port: int,
    api_key: str | None,
    seed: int | None,
    generation_s: tuple[float, float],
    realistic: bool,
    time_scale: float,
) -> None:
    """Serve a Grsai-compatible API with latency, progress, a failure mix and fault injection.

    Point GRSAI_BASE_URL at it. Faults: POST /_sim/faults; counters: GET /_sim/stats.
    """
    from grsai_pipeline.dev.simulator import SimulatorConfig, serve

    config = SimulatorConfig(
        api_key=api_key,
        seed=seed,
        generation_s=generation_s,
        realistic=realistic,
        time_scale=time_scale,
    )
    click.echo(f"Grsai simulator on http://{host}:{port} (Ctrl-C to stop)", err=True)
    serve(host, port, config)
