"""Callback URLs for webhook mode (SPEC 3, 5): a per-task token the receiver can verify."""

from __future__ import annotations

import hashlib
import hmac
from typing import Final
from urllib.parse import urlencode

CALLBACK_PATH: Final = "/api/video/callback"


def callback_token(secret: str, task_id: str) -> str:
    """HMAC-SHA256 of the task id under ``GRSAI_WEBHOOK_SECRET``, hex."""
    return hmac.new(secret.encode(), task_id.encode(), hashlib.sha256).hexdigest()


def callback_url(app_url: str, secret: str, task_id: str) -> str:
    query = urlencode({"task_id": task_id, "token": callback_token(secret, task_id)})
    return f"{app_url.rstrip('/')}{CALLBACK_PATH}?{query}"


def token_is_valid(secret: str, task_id: str, token: str) -> bool:
    # Compare bytes: compare_digest refuses str with non-ASCII characters instead of saying no.
    expected = callback_token(secret, task_id).encode()
    return hmac.compare_digest(expected, token.encode("utf-8", "backslashreplace"))
