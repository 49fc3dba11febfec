"""Reading a batch file (SPEC 2, 6): its bytes from a path or stdin, as UTF-8 text; what the
text must hold is ``domain.batch_file``'s rule, shared with the ``create_batch`` job."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from grsai_pipeline.domain.batch_file import parse_batch_json
from grsai_pipeline.errors import InvalidInput


def read_batch_file(file: str) -> list[dict[str, Any]]:
    """The tasks of a batch file, or InvalidInput naming what is wrong with it."""
    field = f"FILE {file}"
    try:
        raw = sys.stdin.buffer.read() if file == "-" else Path(file).read_bytes()
    except OSError as exc:
        raise InvalidInput(field, f"cannot be read: {exc.strerror}") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise InvalidInput(field, "is not UTF-8 text") from None
    return parse_batch_json(text, field)
