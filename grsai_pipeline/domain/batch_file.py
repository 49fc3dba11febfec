"""A batch file's contents (SPEC 2, 6): a JSON list of task objects, or one line saying why not.

One home for these rules, shared by ``batch create`` (a file or stdin) and the ``create_batch``
job (the tasks given in the Dagster launchpad). Nothing more is checked here: each task's own
rules are applied per task when the batch is written (an invalid task fails alone).
"""

from __future__ import annotations

import json
from typing import Any

from grsai_pipeline.errors import InvalidInput


def parse_batch_json(text: str, field: str) -> list[dict[str, Any]]:
    """The tasks of a batch file's text, or InvalidInput naming ``field`` and what is wrong."""
    try:
        data = json.loads(text, parse_constant=_refuse_constant)
    except json.JSONDecodeError as exc:
        raise InvalidInput(
            field, f"is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from None
    return task_list(data, field)


def task_list(data: object, field: str) -> list[dict[str, Any]]:
    """``data`` as a non-empty list of task objects, or InvalidInput naming ``field``."""
    if not isinstance(data, list):
        raise InvalidInput(field, f"must hold a JSON list of task objects, not {_kind(data)}")
    if not data:
        raise InvalidInput(field, "holds an empty list: a batch needs at least one task")
    for index, item in enumerate(data):
        if not isinstance(item, dict):
            raise InvalidInput(f"{field}:", f"item {index} is {_kind(item)}, not a task object")
    return data


def _refuse_constant(name: str) -> None:
    # Python's json reads NaN and Infinity, which JSON itself does not have.
    raise json.JSONDecodeError(f"{name} is not a JSON value", name, 0)


def _kind(value: object) -> str:
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean"}
    if value is None:
        return "null"
    return names.get(type(value), "a number")
