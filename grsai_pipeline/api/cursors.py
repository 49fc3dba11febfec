"""Page cursors: opaque to clients, checked strictly here, and only ever bound as parameters.

A cursor is URL-safe base64 of a small JSON array. Anything that does not decode to exactly
the expected kinds of values is refused by name (``cursor``), so a forged one can neither
reach SQL as text nor page somewhere a real one could not.
"""

from __future__ import annotations

import base64
import binascii
import json
from datetime import datetime
from typing import Final

from grsai_pipeline.errors import InvalidInput

MAX_CURSOR_CHARS: Final = 256
_REFUSED: Final = "is not a cursor this API gave (pass next_cursor back as it came)"


def batch_cursor(created_at: datetime, batch_id: str) -> str:
    """After the batch (``created_at``, ``batch_id``), newest first."""
    return _encode(["b", created_at.isoformat(), batch_id])


def read_batch_cursor(text: str) -> tuple[datetime, str]:
    match _decode(text):
        case ["b", str(at), str(batch_id)] if len(batch_id) <= 36:
            pass
        case _:
            raise InvalidInput("cursor", _REFUSED)
    try:
        created_at = datetime.fromisoformat(at)
    except ValueError:
        raise InvalidInput("cursor", _REFUSED) from None
    if created_at.tzinfo is None:
        raise InvalidInput("cursor", _REFUSED)
    return created_at, batch_id


def ledger_cursor(entry_id: int) -> str:
    """After the ledger entry ``entry_id``, oldest first."""
    return _encode(["l", entry_id])


def read_ledger_cursor(text: str) -> int:
    match _decode(text):
        case ["l", int(entry_id)] if not isinstance(entry_id, bool) and entry_id >= 0:
            return entry_id
        case _:
            raise InvalidInput("cursor", _REFUSED)


def _encode(parts: list[object]) -> str:
    raw = json.dumps(parts, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode(text: str) -> list[object]:
    if not text or len(text) > MAX_CURSOR_CHARS:
        raise InvalidInput("cursor", _REFUSED)
    try:
        parts = json.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))
    except (binascii.Error, ValueError):
        raise InvalidInput("cursor", _REFUSED) from None
    if not isinstance(parts, list) or not parts:
        raise InvalidInput("cursor", _REFUSED)
    return parts
