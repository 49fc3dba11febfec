"""``demo``: the whole product on this machine, with no configuration and no network.

It starts the simulator on a loopback port, makes a SQLite database and a Dagster home in a
new directory, creates a mixed batch (Sora and Veo, some failing on purpose), runs it to
settlement through Dagster and prints the tasks and the ledger.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import click

from grsai_pipeline.cli.views import describe_batch, ledger_table, tasks_table
from grsai_pipeline.config import load_settings
from grsai_pipeline.errors import RunFailed
from grsai_pipeline.store.accounts import get_account, grant_credits
from grsai_pipeline.store.batches import create_batch, get_batch
from grsai_pipeline.store.db import get_engine, reading
from grsai_pipeline.store.ledger import list_entries, running_ledger
from grsai_pipeline.store.migrate import upgrade_schema

DEMO_USER = "demo-user"
DEMO_KEY = "demo-key-not-secret"
DEMO_CREDITS = 500
DEMO_TIMEOUT_S = 50.0

# Prompts carry simulator directives ([sim:...]) so that each failure shows up on cue.
SAMPLE_BATCH: list[dict[str, Any]] = [
    {"prompt": "A paper boat sails down a rainy street", "model": "sora-2",
     "reference_url": "https://example.com/boat.jpg", "aspect_ratio": "9:16", "duration": 10},
    {"prompt": "Timelapse of a city skyline from dusk to night", "model": "sora-2",
     "aspect_ratio": "16:9", "duration": 15},
    {"prompt": "A hummingbird drinks from a red flower, slow motion", "model": "veo-flash",
     "meta": {"firstFrameUrl": "https://example.com/first.jpg",
              "lastFrameUrl": "https://example.com/last.jpg"}},
    {"prompt": "Product shot of a watch turning on a pedestal", "model": "veo-pro",
     "meta": {"urls": ["https://example.com/watch-1.jpg", "https://example.com/watch-2.jpg"]}},
    {"prompt": "Waves roll onto a black sand beach", "model": "veo-flash",
     "reference_url": "https://example.com/beach.jpg"},
    {"prompt": "一只猫在雨中的东京街头漫步, \"cinematic\"; DROP TABLE video_tasks; --",
     "model": "sora-2"},
    {"prompt": "A storm over the sea [sim:input_moderation]", "model": "sora-2"},
    {"prompt": "A crowded night market [sim:output_moderation]", "model": "veo-pro"},
    {"prompt": "A fox in fresh snow, first try fails [sim:error,succeeded]", "model": "veo-flash"},
    {"prompt": "A glass of water tips over [sim:error]", "model": "sora-2"},
    {"prompt": "Fireworks over a harbour [sim:no_url]", "model": "sora-2", "duration": 15},
    {"prompt": "A chef flips a pancake [sim:api_error]", "model": "veo-flash"},
    {"prompt": "A twelve second clip", "model": "sora-2", "duration": 12},
    {"prompt": "A square video", "model": "veo-pro", "aspect_ratio": "4:3"},
]  # fmt: skip


@click.command()
@click.option(
    "--dir",
    "workdir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Where to keep the demo's database and Dagster home (default: a new temp dir).",
)
def demo(workdir: Path | None) -> None:
    """Run a sample batch end to end against a local simulator, and print the ledger."""
    from grsai_pipeline.cli.dagster_run import open_instance, run_until
    from grsai_pipeline.dev.simulator import SimulatorConfig, SimulatorServer

    workdir = workdir or Path(tempfile.mkdtemp(prefix="grsai-demo-"))
    workdir.mkdir(parents=True, exist_ok=True)
    dagster_home = workdir / "dagster_home"
    dagster_home.mkdir(exist_ok=True)
    (dagster_home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    # Plain prompts succeed; each failure in the sample is asked for by a directive.
    sim_config = SimulatorConfig(
        api_key=DEMO_KEY,
        generation_s=(1.0, 3.0),
        not_found_window_s=0.2,
        mix={"succeeded": 1.0},
        seed=7,
    )
    with SimulatorServer(sim_config) as sim:
        # The demo configures itself through the same settings a deployment uses.
        os.environ.update(
            GRSAI_API_KEY=DEMO_KEY,
            GRSAI_BASE_URL=sim.base_url,
            GRSAI_DATABASE_URL=f"sqlite:///{workdir / 'grsai.db'}",
            GRSAI_POLL_INTERVAL_S="0.5",
            GRSAI_POLL_BUDGET_S=str(DEMO_TIMEOUT_S),
            GRSAI_BACKOFF_BASE_S="0.2",
            GRSAI_ARCHIVE_URL=str(workdir / "videos"),
            DAGSTER_HOME=str(dagster_home),
        )
        for name in ("APP_URL", "NEXT_PUBLIC_APP_URL"):
            os.environ.pop(name, None)
        settings = load_settings()
        engine = get_engine(settings.database_url)
        upgrade_schema(engine)
        grant_credits(engine, DEMO_USER, DEMO_CREDITS)
        new = create_batch(engine, DEMO_USER, SAMPLE_BATCH, settings.price_table)
        click.echo(
            f"simulator at {sim.base_url}; batch {new.batch_id}: {new.total_tasks} tasks, "
            f"{new.invalid_tasks} invalid, {new.reserved_credits} credits reserved"
        )
        with open_instance(settings) as instance:
            view = run_until(
                instance, settings, new.batch_id, until_settled=True, timeout=DEMO_TIMEOUT_S
            )
    if view.status != "settled":
        raise RunFailed(f"the demo batch did not settle in {DEMO_TIMEOUT_S:.0f} s")
    view = get_batch(engine, new.batch_id)
    click.echo("")
    click.echo(tasks_table(view))
    click.echo("")
    click.echo(describe_batch(view))
    click.echo("")
    click.echo(demo_ledger(engine))
    account = get_account(engine, DEMO_USER)
    click.echo(f"\n{DEMO_USER}: balance {account.balance}, held {account.held}")
    archived = [task for task in view.tasks if task.archived_url]
    click.echo(
        f"\n{len(archived)} video(s) archived in {settings.archive_url} "
        f"({sum(task.video_bytes or 0 for task in archived)} bytes, each with its sha256 "
        "in video_tasks)"
    )
    click.echo(
        f"\nDemo data kept in {workdir}. Browse it in the Dagster UI (from this repository;\n"
        "make dev starts a simulator for the runs you launch there):\n"
        f"  DAGSTER_HOME={dagster_home} GRSAI_DATABASE_URL={settings.database_url} "
        f"GRSAI_ARCHIVE_URL={settings.archive_url} make dev"
    )


def demo_ledger(engine: Any) -> str:
    with reading(engine) as conn:
        entries = list_entries(conn, user_id=DEMO_USER)
    return f"ledger of {DEMO_USER}:\n" + ledger_table(running_ledger(entries))
