"""Fetching a video from its upstream URL: streamed in chunks (never whole in memory), retried
with backoff on what may pass (network errors, timeouts, 5xx, 429), given up at once on what
will not (403, 404, 410: the URL expired)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

import httpx
import tenacity

from grsai_pipeline.errors import GrsaiPipelineError

CHUNK_BYTES = 1024 * 1024
EXPIRED_STATUSES = frozenset({403, 404, 410})
T = TypeVar("T")


class VideoUnavailable(GrsaiPipelineError):
    """The video could not be fetched; ``expired`` when its URL will never serve it again."""

    def __init__(self, message: str, *, expired: bool) -> None:
        self.expired = expired
        super().__init__(message)


class _Transient(Exception):
    pass


@contextmanager
def video_chunks(client: httpx.Client, url: str) -> Iterator[Iterator[bytes]]:
    """The body of ``url`` as chunks; VideoExpired/VideoUnavailable on a bad answer."""
    try:
        with client.stream("GET", url) as answer:
            if answer.status_code in EXPIRED_STATUSES:
                raise VideoUnavailable(
                    f"EXPIRED: HTTP {answer.status_code} from the video URL", expired=True
                )
            if answer.status_code == 429 or answer.status_code >= 500:
                raise _Transient(f"HTTP {answer.status_code} from the video URL")
            if answer.status_code != 200:
                raise VideoUnavailable(
                    f"DOWNLOAD_FAILED: HTTP {answer.status_code} from the video URL",
                    expired=False,
                )
            yield answer.iter_bytes(CHUNK_BYTES)
    except httpx.HTTPError as exc:
        raise _Transient(f"{type(exc).__name__}: {exc}") from None


def with_retries(
    attempt: Callable[[], T], *, attempts: int, backoff_s: float, backoff_max_s: float
) -> T:
    """``attempt()`` until it succeeds, raises VideoUnavailable, or ``attempts`` run out
    (then VideoUnavailable, not expired: the next archiving pass tries again)."""
    retrying = tenacity.Retrying(
        retry=tenacity.retry_if_exception_type(_Transient),
        stop=tenacity.stop_after_attempt(attempts),
        wait=tenacity.wait_exponential(multiplier=backoff_s, max=backoff_max_s),
        reraise=True,
    )
    try:
        return retrying(attempt)
    except _Transient as exc:
        raise VideoUnavailable(
            f"DOWNLOAD_FAILED: {exc} (after {attempts} attempts)", expired=False
        ) from None
