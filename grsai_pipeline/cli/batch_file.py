"""Reading a batch file (SPEC 2, 6): a JSON list of task objects, or one line saying why not."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from grsai_pipeline.errors import InvalidInput


def read_batch_file(file: str) -> list[dict[str, Any]]:
    """The tasks of a batch file, or InvalidInput naming what is wrong with it. Nothing more is
    checked here: each task's own rules are applied per task (an invalid task fails alone)."""
    try:
        raw = sys.stdin.buffer.read() if file == "-" else Path(file).read_bytes()
    except OSError as exc:
        raise InvalidInput(f"FILE {file}", f"cannot be read: {exc.strerror}") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise InvalidInput(f"FILE {file}", "is not UTF-8 text") from None
    try:
        data = json.loads(text, parse_constant=_refuse_constant)
    except json.JSONDecodeError as exc:
        raise InvalidInput(
            f"FILE {file}", f"is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from None
    if not isinstance(data, list):
        raise InvalidInput(
            f"FILE {file}", f"must hold a JSON list of task objects, not {_kind(data)}"
        )
    if not data:
        raise InvalidInput(f"FILE {file}", "holds an empty list: a batch needs at least one task")
    for index, item in enumerate(data):
        if not isinstance(item, dict):
            raise InvalidInput(f"FILE {file}:", f"item {index} is {_kind(item)}, not a task object")
    return data


def _refuse_constant(name: str) -> None:
    # Python's json reads NaN and Infinity, which JSON itself does not have.
    raise json.JSONDecodeError(f"{name} is not a JSON value", name, 0)


def _kind(value: object) -> str:
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean"}
    if value is None:
        return "null"
    return names.get(type(value), "a number")
