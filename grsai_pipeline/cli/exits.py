"""The exit codes of SPEC 6, in one place: 0 success, 1 a failure, 2 bad usage or input."""

from __future__ import annotations

from typing import Final

from grsai_pipeline.errors import InvalidInput, SettingsError, UnknownAccount, UnknownBatch

SUCCESS: Final = 0
FAILURE: Final = 1
BAD_INPUT: Final = 2

# Errors that mean the person asked for something wrong; every other error is a failure.
_BAD_INPUT: Final = (InvalidInput, SettingsError, UnknownBatch, UnknownAccount)


def exit_code(error: BaseException) -> int:
    return BAD_INPUT if isinstance(error, _BAD_INPUT) else FAILURE


def one_line(text: str) -> str:
    first = text.strip().splitlines()[0] if text.strip() else "unknown error"
    return first.strip()
