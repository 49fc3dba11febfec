"""The ``grsai-pipeline`` command. Exit codes: 0 success, 1 failure, 2 bad usage or bad input;
every error is one line on stderr."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Sequence
from typing import NoReturn

import click

from grsai_pipeline.cli import process
from grsai_pipeline.cli.api import api
from grsai_pipeline.cli.batches import batch
from grsai_pipeline.cli.credits import credits
from grsai_pipeline.cli.database import db
from grsai_pipeline.cli.demo import demo
from grsai_pipeline.cli.exits import FAILURE, SUCCESS, exit_code, one_line
from grsai_pipeline.cli.run import run
from grsai_pipeline.cli.simulator import simulator
from grsai_pipeline.cli.webhook import webhook
from grsai_pipeline.errors import GrsaiPipelineError


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="grsai-pipeline")
def cli() -> None:
    """Batch AI video generation through the Grsai API, settled exactly once.

    Settings come from the environment (and an optional .env file); see the README.
    """
    process.collect_from_here()  # the command line's imports are done


for command in (db, credits, batch, run, simulator, demo, webhook, api):
    cli.add_command(command)


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of the console script: click without its multi-line error blocks.

    ``argv`` None means a process of its own (the console script), which may tune its garbage
    collector and its exit for a short life (``process``, ``_exit``); tests pass ``argv`` and
    share one process.
    """
    process.whole = argv is None
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    # Dagster's own notices (an instance without dagster.yaml, say) are not ours to print.
    logging.getLogger("dagster").setLevel(logging.ERROR)
    try:
        code = cli.main(args=argv, prog_name="grsai-pipeline", standalone_mode=False)
    except click.exceptions.NoArgsIsHelpError as exc:
        click.echo(exc.ctx.get_help() if exc.ctx else "usage: grsai-pipeline COMMAND", err=True)
        _exit(exc.exit_code)
    except click.ClickException as exc:
        click.echo(f"grsai-pipeline: error: {one_line(exc.format_message())}", err=True)
        _exit(exc.exit_code)
    except click.Abort:
        click.echo("grsai-pipeline: aborted", err=True)
        _exit(FAILURE)
    except GrsaiPipelineError as exc:
        click.echo(f"grsai-pipeline: error: {one_line(str(exc))}", err=True)
        _exit(exit_code(exc))
    except Exception as exc:
        click.echo(f"grsai-pipeline: error: {type(exc).__name__}: {one_line(str(exc))}", err=True)
        _exit(FAILURE)
    _exit(code if isinstance(code, int) else SUCCESS)


def _exit(code: int) -> NoReturn:
    if process.whole:
        # Interpreter shutdown frees every object Dagster made, one by one (0.3 s after a
        # run, measured): everything is committed by now, so flush and leave it to the OS.
        sys.stdout.flush()
        sys.stderr.flush()
        logging.shutdown()
        os._exit(code)
    sys.exit(code)
