"""``batch create`` and ``batch status``."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from grsai_pipeline.cli.errors import BadInput, Failed, database_or_exit, settings_or_exit
from grsai_pipeline.store.batches import BatchView, create_batch, get_batch
from grsai_pipeline.store.errors import InsufficientCredits, UnknownBatch


@click.group()
def batch() -> None:
    """Batches of video tasks."""


@batch.command("create")
@click.argument("file", type=click.Path(dir_okay=False, allow_dash=True))
@click.option("--user", required=True, help="The user whose credits pay for the batch.")
def create(file: str, user: str) -> None:
    """Create a batch from FILE (a JSON list of tasks; - reads stdin) and reserve its credits.

    Prints the new batch id alone on stdout.
    """
    if not user.strip():
        raise BadInput("--user must not be empty")
    tasks = read_batch_file(file)
    settings = settings_or_exit()
    engine = database_or_exit(settings)
    try:
        new = create_batch(engine, user, tasks, settings.price_table)
    except InsufficientCredits as exc:
        raise Failed(str(exc)) from None
    click.echo(new.batch_id)
    click.echo(
        f"{new.total_tasks} task(s), {new.invalid_tasks} invalid, "
        f"{new.reserved_credits} credits reserved",
        err=True,
    )


def read_batch_file(file: str) -> list[dict[str, Any]]:
    """The tasks of a batch file, or BadInput naming what is wrong with it. Nothing more is
    checked here: each task's own rules are applied per task (an invalid task fails alone)."""
    try:
        raw = sys.stdin.buffer.read() if file == "-" else Path(file).read_bytes()
    except OSError as exc:
        raise BadInput(f"cannot read FILE {file}: {exc.strerror}") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise BadInput(f"FILE {file} is not UTF-8 text") from None
    try:
        data = json.loads(text, parse_constant=_refuse_constant)
    except json.JSONDecodeError as exc:
        raise BadInput(
            f"FILE {file} is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from None
    if not isinstance(data, list):
        raise BadInput(f"FILE {file} must hold a JSON list of task objects, not {_kind(data)}")
    if not data:
        raise BadInput(f"FILE {file} holds an empty list: a batch needs at least one task")
    for index, item in enumerate(data):
        if not isinstance(item, dict):
            raise BadInput(f"FILE {file}: item {index} is {_kind(item)}, not a task object")
    return data


def _refuse_constant(name: str) -> None:
    # Python's json reads NaN and Infinity, which JSON itself does not have.
    raise json.JSONDecodeError(f"{name} is not a JSON value", name, 0)


def _kind(value: object) -> str:
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean"}
    if value is None:
        return "null"
    return names.get(type(value), "a number")


@batch.command("status")
@click.argument("batch_id")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def status(batch_id: str, as_json: bool) -> None:
    """Show a batch: status, counts per task status, credits, and every task."""
    engine = database_or_exit(settings_or_exit())
    try:
        view = get_batch(engine, batch_id)
    except UnknownBatch as exc:
        raise BadInput(str(exc)) from None
    if as_json:
        click.echo(json.dumps(batch_json(view), ensure_ascii=False))
    else:
        click.echo(describe_batch(view))
        click.echo(tasks_table(view))


def batch_json(view: BatchView) -> dict[str, Any]:
    """The ``batch status --json`` object of SPEC 6 (with a few more keys)."""
    return {
        "batch_id": view.batch_id,
        "user_id": view.user_id,
        "status": view.status,
        "total_tasks": view.total_tasks,
        "counts": view.counts,
        "progress_percent": view.progress_percent,
        "reserved_credits": view.reserved_credits,
        "charged_credits": view.charged_credits,
        "refunded_credits": view.refunded_credits,
        "possible_duplicates": view.possible_duplicates,
        "created_at": view.created_at.isoformat(),
        "settled_at": view.settled_at.isoformat() if view.settled_at else None,
        "tasks": [
            {
                "id": task.id,
                "batch_index": task.batch_index,
                "status": task.status,
                "model": task.model,
                "video_url": task.video_url,
                "error_message": task.error_message,
                "attempts": task.attempts,
                "progress": task.progress,
                "price": task.price,
                "possible_duplicates": task.possible_duplicates,
            }
            for task in view.tasks
        ],
    }


def describe_batch(view: BatchView) -> str:
    counts = ", ".join(f"{count} {status}" for status, count in view.counts.items() if count)
    duplicates = (
        f"; {view.possible_duplicates} possible duplicate submit(s)"
        if view.possible_duplicates
        else ""
    )
    return (
        f"batch {view.batch_id} ({view.user_id}): {view.status}, {counts}; "
        f"credits reserved {view.reserved_credits}, charged {view.charged_credits}, "
        f"refunded {view.refunded_credits}{duplicates}"
    )


def tasks_table(view: BatchView) -> str:
    import pandas as pd

    frame = pd.DataFrame(
        [
            {
                "#": task.batch_index,
                "model": task.model or "-",
                "status": task.status,
                "attempts": task.attempts,
                "result": task.video_url or task.error_message or f"{task.progress}%",
            }
            for task in view.tasks
        ]
    )
    return frame.to_string(index=False) if not frame.empty else "(no tasks)"
