"""Signed links to archived videos: ``GET /v1/videos/{task_id}?expires=E&signature=S`` opens
without a bearer token while ``E`` (unix seconds) is ahead and ``S`` is the HMAC-SHA256, hex, of
the task id and ``E`` under ``GRSAI_LINK_SECRET``. A link names one video and lives until ``E``;
nothing else in it is a credential, and the secret itself never leaves the server.

Pure: the time is passed in, so that a link is made and checked the same way in every process
(the Dagster run that writes it into the UI, the API that serves it) and in tests.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Final
from urllib.parse import quote, urlencode

VIDEO_PATH: Final = "/v1/videos/"
# Keeps a link's signature apart from any other HMAC made with the same secret by mistake.
_PURPOSE: Final = "grsai-pipeline video link"


class LinkCheck(StrEnum):
    VALID = "valid"
    EXPIRED = "expired"
    FORGED = "forged"


def link_signature(secret: str, task_id: str, expires: int) -> str:
    """HMAC-SHA256 (hex) of the task id and the expiry; ``expires`` is digits only, so the
    message reads back one way whatever the task id holds."""
    message = f"{_PURPOSE}\n{task_id}\n{expires}".encode()
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def check_link(secret: str, task_id: str, expires: int, signature: str, now: float) -> LinkCheck:
    """Whether a signed link opens ``task_id`` at ``now``. The signature is compared in constant
    time and first, so that an expiry moved forward reads as forged, not as expired."""
    expected = link_signature(secret, task_id, expires).encode()
    # Bytes: compare_digest refuses str with non-ASCII characters instead of saying no.
    if not hmac.compare_digest(expected, signature.encode("utf-8", "backslashreplace")):
        return LinkCheck.FORGED
    return LinkCheck.VALID if now < expires else LinkCheck.EXPIRED


@dataclass(frozen=True)
class VideoLinks:
    """Makes signed links on the API at ``base_url`` that live ``ttl_s`` seconds."""

    base_url: str
    secret: str = field(repr=False)
    ttl_s: int

    def expires(self, now: float) -> int:
        return int(now) + self.ttl_s

    def path(self, task_id: str) -> str:
        return f"{self.base_url.rstrip('/')}{VIDEO_PATH}{quote(task_id, safe='')}"

    def url(self, task_id: str, now: float) -> str:
        expires = self.expires(now)
        query = urlencode(
            {"expires": expires, "signature": link_signature(self.secret, task_id, expires)}
        )
        return f"{self.path(task_id)}?{query}"
